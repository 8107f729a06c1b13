package transfer

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bazelbuild/remote-apis-sdks/go/pkg/digest"
	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/protobuf/proto"

	"github.com/bst-cache/bst-cache/buildstream"
	"github.com/bst-cache/bst-cache/cache"
)

// Refs naming one artifact (its strong and weak ref) and an artifact that
// shares a file with it, pushed at once: each blob goes to the target
// once and every ref is done. The first two FindMissingBlobs answer only
// once both are made, so the race that sent blobs twice happens every
// time: two refs told a blob is missing before either has sent it.
func TestPushMovesEachBlobOnce(t *testing.T) {
	shared := strings.Repeat("shared", 1000)
	x, y := artifact("x1", "x2", shared), artifact("y1", shared)
	target := newFake("target")
	var once sync.Once
	met := make(chan struct{})
	var mu sync.Mutex
	arrived := 0
	target.found = func() {
		mu.Lock()
		arrived++
		if arrived == 2 {
			once.Do(func() { close(met) })
		}
		mu.Unlock()
		select {
		case <-met:
		case <-time.After(time.Second): // a ref that waits for its carrier comes later
		}
	}
	var warns []string
	e := newEngine(t, nil, false, &warns)
	refs := map[string]art{"demo/x/strong": x, "demo/x/weak": x, "demo/y/key": y}
	for ref, a := range refs {
		for d, b := range a.blobs {
			e.Store.PutBytes(d, b)
		}
		if err := e.Store.SetRef(cache.KindArtifact, ref, buildstream.V1RefContent(a.root)); err != nil {
			t.Fatal(err)
		}
	}
	res, st := e.Push(context.Background(), []string{"demo/x/strong", "demo/x/weak", "demo/y/key"}, cacheOf(target), PushOptions{})
	for _, r := range res {
		if r.Status != StatusDone {
			t.Errorf("%s: %s (%s); want done", r.Ref, r.Status, r.Reason)
		}
	}
	for d, n := range target.sends {
		if n != 1 {
			t.Errorf("blob %s sent %d times", d, n)
		}
	}
	if want := int64(len(target.sends)); st.Pushed.Blobs != want {
		t.Errorf("pushed %d blobs counted, %d sent", st.Pushed.Blobs, want)
	}
}

// keyed is an artifact holding meta/keys.yaml, so its refs under both keys
// are known as one artifact, as bst stores one.
func keyed(strong, weak string, contents ...string) art {
	a := artifact(contents...)
	var root repb.Directory
	if err := proto.Unmarshal(a.blobs[a.root], &root); err != nil {
		panic(err)
	}
	delete(a.blobs, a.root)
	k := []byte("strong: " + strong + "\nweak: " + weak + "\n")
	kd := digest.NewFromBlob(k)
	a.blobs[kd] = k
	meta := a.add(&repb.Directory{Files: []*repb.FileNode{{Name: buildstream.KeysFile, Digest: kd.ToProto()}}})
	root.Directories = append(root.Directories, &repb.DirectoryNode{Name: buildstream.MetaDir, Digest: meta.ToProto()})
	a.root = a.add(&root)
	return a
}

// A dry run of a push or a copy counts what the real run then moves: an
// artifact's weak ref would move with its strong one, a blob shared
// between artifacts counts once per target, and what the target holds
// counts nothing.
func TestDryRunCountsWhatTheRunMoves(t *testing.T) {
	shared := strings.Repeat("shared", 1000)
	x, y := keyed("xs", "xw", "x1", shared), keyed("ys", "yw", "y1", shared)
	arts := map[string]art{"demo/x/xs": x, "demo/x/xw": x, "demo/y/ys": y, "demo/y/yw": y}
	refs := []string{"demo/x/xs", "demo/x/xw", "demo/y/ys", "demo/y/yw"}
	cases := []struct {
		name   string
		target func() *fakeCache
		with   int // refs that would move with another
	}{
		{"an empty target", func() *fakeCache { return newFake("t") }, 2},
		{"a target holding y", func() *fakeCache { return newFake("t").holding("demo/y/ys", y).holding("demo/y/yw", y) }, 1},
		{"a target holding the shared file", func() *fakeCache { return newFake("t").holding("other/z/k", keyed("zs", "zw", shared)) }, 2},
	}
	for _, c := range cases {
		for _, op := range []string{"push", "copy"} {
			t.Run(c.name+"/"+op, func(t *testing.T) {
				target := c.target()
				var warns []string
				e := newEngine(t, nil, false, &warns)
				run := func(dry bool) ([]Result, Stats) {
					if op == "push" {
						return e.Push(context.Background(), refs, cacheOf(target), PushOptions{DryRun: dry})
					}
					return e.Copy(context.Background(), refs, cacheOf(target), CopyOptions{PushOptions: PushOptions{DryRun: dry}})
				}
				src := newFake("src")
				for ref, a := range arts {
					src.holding(ref, a)
					if op == "push" {
						for d, b := range a.blobs {
							e.Store.PutBytes(d, b)
						}
						if err := e.Store.SetRef(cache.KindArtifact, ref, buildstream.V1RefContent(a.root)); err != nil {
							t.Fatal(err)
						}
					}
				}
				e.Caches = cacheOf(src)
				res, dry := run(true)
				with := 0
				for _, r := range res {
					if strings.HasPrefix(r.Reason, "would move once with ") && r.Blobs == 0 {
						with++
					}
				}
				if len(target.sends) != 0 || with != c.with {
					t.Errorf("dry run: %d blobs sent, %d refs would move with another (want 0, %d): %+v", len(target.sends), with, c.with, res)
				}
				res, real := run(false)
				for _, r := range res {
					if r.Status != StatusDone && r.Status != StatusSkipped {
						t.Errorf("%s: %s (%s)", r.Ref, r.Status, r.Reason)
					}
				}
				if dry.WouldBlobs != real.Pushed.Blobs || dry.WouldBytes != real.Pushed.Bytes {
					t.Errorf("the dry run would move %d blobs (%d bytes), the run pushed %d (%d bytes)", dry.WouldBlobs, dry.WouldBytes, real.Pushed.Blobs, real.Pushed.Bytes)
				}
			})
		}
	}
}

// A no-op copy of an artifact's two refs (strong and weak, as ls and sync
// list them) asks the target once per ref, and reads the artifact's tree
// on the source once: the dry run that checks a target naming the digest
// is told what the target just answered, and the survey of a closure is
// shared by the refs naming it. Each ref was asked twice and each tree
// read once per ref: a no-op sync of 1,000 refs over a 40 ms round trip
// took 6.5 s.
func TestNoOpCopyAsksOnce(t *testing.T) {
	x := keyed("xs", "xw", "x1", "x2")
	refs := []string{"demo/x/xs", "demo/x/xw"}
	log := &lookupLog{}
	src, target := newFake("src"), newFake("t")
	for _, ref := range refs {
		src.holding(ref, x)
		target.holding(ref, x)
	}
	target.lookups = log
	var warns []string
	e := newEngine(t, nil, false, &warns)
	e.Caches = cacheOf(src)
	res, _ := e.Copy(context.Background(), refs, cacheOf(target), CopyOptions{})
	for _, r := range res {
		if r.Status != StatusSkipped {
			t.Errorf("%s: %s (%s); want skipped", r.Ref, r.Status, r.Reason)
		}
	}
	asked := map[string]int{}
	for _, l := range log.entries {
		asked[l]++
	}
	for l, n := range asked {
		if n != 1 {
			t.Errorf("%s: %d times; want once", l, n)
		}
	}
	if n := src.reads[x.root]; n != 1 {
		t.Errorf("the source's root Directory was read %d times; want once for both refs", n)
	}
}
