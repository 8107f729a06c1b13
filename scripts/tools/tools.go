//go:build tools

// Package tools pins the servers and code generators that the tests and
// scripts build from the Go module proxy, so the main module stays clean.
package tools

import (
	_ "github.com/buchgr/bazel-remote/v2"
	_ "google.golang.org/grpc/cmd/protoc-gen-go-grpc"
	_ "google.golang.org/protobuf/cmd/protoc-gen-go"
)
