package server

import (
	"bufio"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
)

// A log whose disk does not take writes (a pipe nobody reads) never holds
// up a call: lines past the queue are dropped, counted, and the log says
// how many once it can write again; every other line arrives, in order.
func TestAccessLogDropsWhenBehind(t *testing.T) {
	path := filepath.Join(t.TempDir(), "pipe")
	if err := syscall.Mkfifo(path, 0o600); err != nil {
		t.Skip("no FIFOs here:", err)
	}
	// A reader that reads nothing yet: the writer fills the pipe and
	// blocks.
	rc := make(chan *os.File)
	go func() {
		r, err := os.Open(path)
		if err != nil {
			panic(err)
		}
		rc <- r
	}()
	l, err := OpenAccessLog(path)
	if err != nil {
		t.Fatal(err)
	}
	r := <-rc
	const n = 4 * AccessLogQueue
	done := make(chan struct{})
	go func() {
		for i := range n {
			l.Log(&Call{Start: time.Now(), Method: "/m", Peer: "p", RefCount: i, Code: codes.OK})
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(time.Minute):
		t.Fatal("Log blocked behind a writer that cannot write")
	}
	closed := make(chan error, 1)
	go func() { closed <- l.Close() }()
	sc := bufio.NewScanner(r)
	var got, dropped int64
	last := -1
	for sc.Scan() {
		var line accessLine
		if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		if line.Dropped > 0 {
			dropped += line.Dropped
			if !strings.Contains(line.Error, "dropped") {
				t.Errorf("the dropped-lines line says %q", line.Error)
			}
			continue
		}
		if line.RefCount <= last {
			t.Fatalf("line %d after line %d", line.RefCount, last)
		}
		last = line.RefCount
		got++
	}
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
	if dropped == 0 || got+dropped != n || got < AccessLogQueue {
		t.Fatalf("%d lines written, %d said dropped, of %d logged (queue %d)", got, dropped, n, AccessLogQueue)
	}
	t.Logf("%d lines written, %d dropped while the pipe was full", got, dropped)
}
