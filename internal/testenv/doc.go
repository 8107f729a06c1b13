// Package testenv starts the real servers and clients that bst-cache's tests
// run against: BuildStream 1.6's bst-artifact-server and bst (Debian's
// buildstream package) and bazel-remote (built from its Go module by the
// tools module in scripts/tools). Servers listen on 127.0.0.1 only, are
// waited for with bounded polls, and are stopped by the PID that was started.
//
// A missing server skips the test on a developer's machine and fails it
// under CI=true, so CI can never pass by skipping.
package testenv
