package commands_test

import (
	"bufio"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/bst-cache/bst-cache/internal/testenv"
)

// fileCalls are the system calls a pull makes on the store: every one an
// entry into the kernel, which on a virtual machine costs more than the
// work of most of them (issue 21: the pull client's CPU per GB). Those
// of the network and the Go runtime (read, write, futex, nanosleep,
// epoll_pwait...) are left out: their numbers follow timing.
var fileCalls = []string{
	"openat", "close", "newfstatat", "fstat", "statx", "linkat", "renameat", "renameat2",
	"mkdirat", "unlinkat", "writev", "pwrite64", "fsync", "fdatasync", "syncfs",
	"fcntl", "fchmod", "epoll_ctl", "getdents64", "lseek", "flock",
}

// A pull of 100 scripts/genrefs artifacts (100 refs, 701 objects) from
// serve, counted by strace: the store's system calls stay within 9 an
// object (8.4 now). Before, 12.5: each ref's temporary file was an *os.File
// (four fcntl calls and an epoll_ctl to find it cannot be polled, and a
// chmod), each rename looked the ref's path up first, and each directory
// synced was opened as an *os.File too. Then 9.8: the weak ref was read
// before it was written, the empty Directory (logs/) was read back, and a
// missing fan-out or ref directory was looked up twice before it was made.
func TestPullSystemCallsPerObject(t *testing.T) {
	strace, err := exec.LookPath("strace")
	if err != nil {
		testenv.Missing(t, "strace (apt-get install strace)")
	}
	dir := filepath.Join(t.TempDir(), "repo")
	refs := testenv.Genrefs(t, dir, "-n", "100")
	srv := testenv.StartServe(t, testenv.ServeOptions{Dir: dir})
	cfg := writeConfig(t, "format = \"bst1\"\njobs = 4\n"+cacheTOML("serve", srv.URL(), false))
	local := t.TempDir()
	counts := filepath.Join(t.TempDir(), "strace")
	args := append([]string{"-f", "-c", "-o", counts, testenv.BstCacheBinary(t), "--config", cfg, "--local", local, "-q", "--no-progress", "pull"}, refs...)
	cmd := exec.Command(strace, args...)
	cmd.Env = append(os.Environ(), "BST_CACHE_CONFIG=/dev/null", "HOME="+t.TempDir())
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("pull under strace: %v\n%s", err, out)
	}
	objects := 0
	if err := filepath.WalkDir(filepath.Join(local, "cas", "objects"), func(_ string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			objects++
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	calls := straceCounts(t, counts)
	total := 0
	var each []string
	for _, name := range fileCalls {
		if n := calls[name]; n > 0 {
			total += n
			each = append(each, fmt.Sprintf("%s %d", name, n))
		}
	}
	per := float64(total) / float64(objects)
	t.Logf("%d refs, %d objects: %d calls on the store, %.1f an object (%s)", len(refs), objects, total, per, strings.Join(each, ", "))
	if objects < 7*len(refs) {
		t.Fatalf("%d objects pulled for %d refs, want 7 a ref", objects, len(refs))
	}
	if per > 9 {
		t.Errorf("%.1f system calls on the store an object pulled, want at most 9", per)
	}
}

// straceCounts reads the table `strace -c` writes: calls by system call.
func straceCounts(t *testing.T, path string) map[string]int {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	calls := map[string]int{}
	s := bufio.NewScanner(f)
	for s.Scan() {
		// % time, seconds, usecs/call, calls, [errors,] syscall
		fields := strings.Fields(s.Text())
		if len(fields) < 5 {
			continue
		}
		n, err := strconv.Atoi(fields[3])
		if err != nil || fields[len(fields)-1] == "total" {
			continue
		}
		calls[fields[len(fields)-1]] = n
	}
	if err := s.Err(); err != nil {
		t.Fatal(err)
	}
	return calls
}
