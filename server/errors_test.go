package server

import (
	"fmt"
	"syscall"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/bst-cache/bst-cache/cache"
)

// A full disk is RESOURCE_EXHAUSTED, which clients read as "try another
// cache or later", not INTERNAL.
func TestNoSpaceIsResourceExhausted(t *testing.T) {
	for _, err := range []error{
		fmt.Errorf("writing blob: %w", syscall.ENOSPC),
		fmt.Errorf("blob: %w", cache.ErrNoSpace),
	} {
		if got := status.Code(grpcError(err)); got != codes.ResourceExhausted {
			t.Errorf("%v: %s, want RESOURCE_EXHAUSTED", err, got)
		}
	}
}
