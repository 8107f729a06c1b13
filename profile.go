package main

import (
	"fmt"
	"os"
	"runtime/pprof"
	"runtime/trace"
)

// startProfiling writes a CPU profile to $BST_CACHE_CPUPROFILE, an
// execution trace to $BST_CACHE_TRACE and, when the run ends, a heap
// profile to $BST_CACHE_MEMPROFILE (what was allocated, and what was in
// use at its end), for whoever tunes transfers (scripts/bench) and big
// stores (scripts/bench-scale). It returns the function that finishes them.
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
	if path := os.Getenv("BST_CACHE_MEMPROFILE"); path != "" {
		stops = append(stops, func() {
			if f := createProfile(path); f != nil {
				pprof.Lookup("allocs").WriteTo(f, 0)
				f.Close()
			}
		})
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
