//go:build !race

package remotes_test

const raceEnabled = false
