package main

import (
	"fmt"
	"os"
	"runtime/pprof"
	"runtime/trace"
)

// startProfiling writes a CPU profile to $BST_CACHE_CPUPROFILE and an
// execution trace to $BST_CACHE_TRACE, for whoever tunes transfers
// (scripts/bench). It returns the function that finishes both.
func startProfiling() (stop func()) {
	var stops []func()
	if path := os.Getenv("BST_CACHE_CPUPROFILE"); path != "" {
		if f := createProfile(path); f != nil && pprof.StartCPUProfile(f) == nil {
			stops = append(stops, func() { pprof.StopCPUProfile(); f.Close() })
		}
	}
	if path := os.Getenv("BST_CACHE_TRACE"); path != "" {
		if f := createProfile(path); f != nil && trace.Start(f) == nil {
			stops = append(stops, func() { trace.Stop(); f.Close() })
		}
	}
	return func() {
		for _, s := range stops {
			s()
		}
	}
}

func createProfile(path string) *os.File {
	f, err := os.Create(path)
	if err != nil {
		fmt.Fprintf(os.Stderr, "bst-cache: warning: profile not written: %v\n", err)
		return nil
	}
	return f
}
