// Package transfer moves BuildStream artifacts and sources between the
// local store (package cache) and a priority list of remote caches
// (package remotes): pull, push, copy and which. It knows the BuildStream
// formats (what a ref names, how each index is asked) and nothing of the
// command line; progress and logs go through the Events it is given.
package transfer
