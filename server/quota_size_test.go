package server

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	"golang.org/x/sys/unix"

	"github.com/bst-cache/bst-cache/cache"
	"github.com/bst-cache/bst-cache/internal/cpucache"
)

// accountBytes builds an account shaped like a BuildStream 1 store of n
// artifacts (two refs, strong and weak key, naming one tree of 8 objects,
// as the start-up walk finds them) and returns the heap it holds per
// object and ref: what the heap loses when it is dropped.
func accountBytes(n int) float64 {
	q := newAccount()
	for a := range n {
		ds := make([]digest.Digest, 8)
		for i := range ds {
			var seed [8]byte
			binary.LittleEndian.PutUint64(seed[:], uint64(a*8+i))
			h := sha256.Sum256(seed[:])
			ds[i] = digest.Digest{Hash: hex.EncodeToString(h[:]), Size: int64(1000 + i)}
			q.add(ds[i])
		}
		closure := q.indexes(ds, false)
		for _, key := range []string{"strong", "weak"} {
			q.setRecord(refKey{cache.KindBst1Artifact, fmt.Sprintf("project/element-%06d/%s-%056x", a, key, a)}, closure, int64(a), 0)
		}
	}
	var with, without runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&with)
	runtime.KeepAlive(q)
	runtime.GC()
	runtime.ReadMemStats(&without)
	return (float64(with.HeapAlloc) - float64(without.HeapAlloc)) / float64(n*(8+2))
}

// The account costs at most 200 bytes an object or ref (the issue's
// bound), and keeps what its flat object table saved: 154 bytes with a
// map keyed by hash, 129 with the table.
func TestQuotaAccountSize(t *testing.T) {
	if per := accountBytes(25_000); per > 140 {
		t.Errorf("the account holds %.0f bytes per object and ref: want at most 140", per)
	} else {
		t.Logf("%.0f bytes per object and ref", per)
	}
}

// The account of 800,000 objects and 200,000 refs (go test -bench
// QuotaAccount -run ^$ ./server/).
func BenchmarkQuotaAccount(b *testing.B) {
	for range b.N {
		b.ReportMetric(accountBytes(100_000), "bytes/entry")
	}
}

// What renewing the leases of the blobs a FindMissingBlobs found costs a
// digest, with 700 objects in the account and with 700,000 (the big
// store of scripts/bench-scale), 100 digests a call taken in turn from
// 2,000 (as scripts/lookups asks), the objects loose or named by refs;
// and, cold, with the processor's caches cold before each call, as a
// server's calls find them (the median call):
// go test -bench QuotaUse -run ^$ ./server/.
func BenchmarkQuotaUse(b *testing.B) {
	for _, c := range []struct {
		n           int
		named, cold bool
	}{{700, false, false}, {700_000, false, false}, {700, true, false}, {700_000, true, false}, {700, true, true}, {700_000, true, true}} {
		b.Run(fmt.Sprint(c.n, map[bool]string{true: "/named"}[c.named], map[bool]string{true: "/cold"}[c.cold]), func(b *testing.B) {
			n := c.n
			q := newAccount()
			ds := make([]digest.Digest, n)
			for i := range ds {
				var seed [8]byte
				binary.LittleEndian.PutUint64(seed[:], uint64(i))
				h := sha256.Sum256(seed[:])
				ds[i] = digest.Digest{Hash: hex.EncodeToString(h[:]), Size: 1000}
				j := q.add(ds[i])
				if c.named {
					q.objs[j].needs = 1
				}
			}
			q.know(time.Now(), nil)
			asked := make([]digest.Digest, 2000)
			for i := range asked {
				asked[i] = ds[i*7919%n]
			}
			if c.cold {
				took := make([]time.Duration, b.N)
				var kept byte
				req := make([]digest.Digest, 100)
				for i := range b.N {
					kept ^= cpucache.Evict()
					// The digests as a request just decoded holds them.
					at := i * 100 % len(asked)
					for j, d := range asked[at : at+100] {
						req[j] = digest.Digest{Hash: strings.Clone(d.Hash), Size: d.Size}
					}
					start := time.Now()
					q.use(req, time.Now())
					took[i] = time.Since(start)
				}
				slices.Sort(took)
				b.ReportMetric(float64(took[b.N/2].Nanoseconds())/100+float64(kept&0), "ns/digest")
				return
			}
			// The thread's CPU time too: on a busy machine the wall
			// time counts other processes' turns.
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			var before, after unix.Rusage
			unix.Getrusage(unix.RUSAGE_THREAD, &before)
			b.ResetTimer()
			for i := range b.N {
				at := i * 100 % len(asked)
				q.use(asked[at:at+100], time.Now())
			}
			b.StopTimer()
			unix.Getrusage(unix.RUSAGE_THREAD, &after)
			cpu := time.Duration(after.Utime.Nano() + after.Stime.Nano() - before.Utime.Nano() - before.Stime.Nano())
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*100), "ns/digest")
			b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N*100), "cpu-ns/digest")
		})
	}
}
