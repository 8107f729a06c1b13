package transfer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
	"unsafe"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"golang.org/x/sys/unix"

	"github.com/bst-cache/bst-cache/cache"
	"github.com/bst-cache/bst-cache/config"
	"github.com/bst-cache/bst-cache/internal/testenv"
)

// A pull into an empty store reads none of the Directories it downloads
// back from disk: the walk goes on from the bytes it downloaded, which
// were checked against their digest (issue 21: a pull's CPU per GB).
// The empty Directory (an artifact's logs/, most often), which a pull
// writes itself, is not read either. Opens are seen by inotify on the
// store's fan-out directories, from serve (GetTree) and from
// bst-artifact-server (Directories level by level).
func TestPullReadsNoDirectoryBack(t *testing.T) {
	const ref = "demo/app/key"
	a := artifact("one", "two", "three")
	delete(a.blobs, a.root)
	a.root = a.add(&repb.Directory{Directories: []*repb.DirectoryNode{
		{Name: "files", Digest: a.add(&repb.Directory{Files: filesOf(a)}).ToProto()},
		{Name: "logs", Digest: a.add(&repb.Directory{}).ToProto()},
	}})
	for _, server := range []string{"serve", "bst-artifact-server"} {
		t.Run(server, func(t *testing.T) {
			dir := storeHolding(t, ref, a)
			var srv *testenv.Server
			if server == "serve" {
				srv = testenv.StartServe(t, testenv.ServeOptions{Dir: dir})
			} else {
				srv = testenv.StartArtifactServer(t, testenv.ArtifactServerOptions{Dir: dir})
			}
			c := NewCaches([]config.Cache{{
				Name: server, URL: srv.URL(), Type: config.TypeAll, MaxConcurrency: 4,
				Endpoint:   config.Endpoint{Target: srv.Addr},
				Connection: config.Connection{ConnectTimeout: 5 * time.Second, RequestTimeout: 30 * time.Second, RetryDelay: 20 * time.Millisecond},
			}}, 0)[0]
			t.Cleanup(func() { Close([]*Cache{c}) })

			// The store's directories are made first, for inotify to
			// watch every fan-out directory before anything is written.
			local := filepath.Join(t.TempDir(), "local")
			opens := watchOpens(t, filepath.Join(local, "cas", "objects"))
			if err := os.MkdirAll(filepath.Join(local, "tmp"), 0o755); err != nil {
				t.Fatal(err)
			}
			store, err := cache.Open(local, cache.KindBst1Artifact)
			if err != nil {
				t.Fatal(err)
			}
			e := &Engine{Store: store, Kind: cache.KindBst1Artifact, Caches: []*Cache{c}, Jobs: 2}
			results, _ := e.Pull(context.Background(), []string{ref}, PullOptions{})
			if results[0].Status != StatusDone {
				t.Fatalf("pull: %+v", results[0])
			}
			// Every blob but the files is a Directory.
			dirs := map[string]bool{}
			for d := range a.blobs {
				if !slices.Contains(a.files, d) {
					dirs[d.Hash] = true
				}
			}
			if len(dirs) != 3 {
				t.Fatalf("the artifact has %d Directories, want 3", len(dirs))
			}
			for _, h := range opens() {
				if dirs[h] {
					t.Errorf("Directory %s was read back from the local store after it was downloaded", h)
				}
			}
		})
	}
}

// filesOf is the file nodes of artifact a's files/, in order.
func filesOf(a art) []*repb.FileNode {
	var out []*repb.FileNode
	for i, d := range a.files {
		out = append(out, &repb.FileNode{Name: fmt.Sprintf("f%d", i), Digest: d.ToProto()})
	}
	return out
}

// watchOpens makes objects' 256 fan-out directories and watches them
// for files opened; the function it returns says which objects (by hash)
// were opened since.
func watchOpens(t *testing.T, objects string) func() []string {
	t.Helper()
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		t.Skipf("inotify: %v", err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	fans := map[int32]string{}
	for i := range 256 {
		fan := fmt.Sprintf("%02x", i)
		p := filepath.Join(objects, fan)
		if err := os.MkdirAll(p, 0o755); err != nil {
			t.Fatal(err)
		}
		wd, err := unix.InotifyAddWatch(fd, p, unix.IN_OPEN)
		if err != nil {
			t.Fatal(err)
		}
		fans[int32(wd)] = fan
	}
	return func() []string {
		var opened []string
		buf := make([]byte, 64<<10)
		for {
			n, err := unix.Read(fd, buf)
			if errors.Is(err, unix.EAGAIN) {
				return opened
			}
			if err != nil {
				t.Fatal(err)
			}
			for off := 0; off+unix.SizeofInotifyEvent <= n; {
				ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
				name := buf[off+unix.SizeofInotifyEvent : off+unix.SizeofInotifyEvent+int(ev.Len)]
				if ev.Mask&unix.IN_Q_OVERFLOW != 0 {
					t.Fatal("inotify queue overflowed")
				}
				if i := bytes.IndexByte(name, 0); i >= 0 {
					name = name[:i]
				}
				if fan, ok := fans[ev.Wd]; ok && len(name) > 0 {
					opened = append(opened, fan+string(name))
				}
				off += unix.SizeofInotifyEvent + int(ev.Len)
			}
		}
	}
}
