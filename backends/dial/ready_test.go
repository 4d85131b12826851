package dial

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"
)

// fakeConns opens numbered connections and records which were closed.
type fakeConns struct {
	mu       sync.Mutex
	next     int
	fail     bool
	closed   []int
	unusable map[int]bool
}

func (f *fakeConns) options(size int, idle time.Duration) ReadyOptions[int] {
	return ReadyOptions[int]{
		Size: size, Idle: idle, OpenTimeout: time.Minute,
		Open: func(context.Context) (int, error) {
			f.mu.Lock()
			defer f.mu.Unlock()
			if f.fail {
				return 0, errors.New("refused")
			}
			f.next++
			return f.next, nil
		},
		Close: func(c int) {
			f.mu.Lock()
			defer f.mu.Unlock()
			f.closed = append(f.closed, c)
		},
		Usable: func(c int) bool {
			f.mu.Lock()
			defer f.mu.Unlock()
			return !f.unusable[c]
		},
	}
}

func (f *fakeConns) closedOnes() []int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Sorted(slices.Values(f.closed))
}

// waitFor waits for cond, failing after a generous deadline.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(time.Minute); !cond(); time.Sleep(2 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// TestReady: the first Take finds none and starts filling the set; a
// later one takes the newest usable connection and replaces it; an
// unusable one is closed and passed over; an unused one is closed after
// the idle time; Close closes what is ready and Take then finds none.
func TestReady(t *testing.T) {
	tests := []struct {
		name string
		run  func(t *testing.T, f *fakeConns)
	}{
		{"ok/take-and-replace", func(t *testing.T, f *fakeConns) {
			r := NewReady(f.options(1, time.Minute))
			defer r.Close()
			if c, ok := r.Take(); ok {
				t.Fatalf("Take on an empty set gave %d", c)
			}
			waitFor(t, "one ready", func() bool { return r.Len() == 1 })
			if c, ok := r.Take(); !ok || c != 1 {
				t.Fatalf("Take gave %d, %v; want 1", c, ok)
			}
			waitFor(t, "a replacement", func() bool { return r.Len() == 1 })
			if c, ok := r.Take(); !ok || c != 2 {
				t.Fatalf("Take gave %d, %v; want the replacement, 2", c, ok)
			}
			if got := f.closedOnes(); len(got) != 0 {
				t.Errorf("closed %v, want none", got)
			}
		}},
		{"ok/unusable-passed-over", func(t *testing.T, f *fakeConns) {
			r := NewReady(f.options(1, time.Minute))
			defer r.Close()
			r.Take()
			waitFor(t, "one ready", func() bool { return r.Len() == 1 })
			f.mu.Lock()
			f.unusable = map[int]bool{1: true}
			f.mu.Unlock()
			if c, ok := r.Take(); ok {
				t.Fatalf("Take gave %d; want none (1 is unusable)", c)
			}
			if got := f.closedOnes(); !slices.Equal(got, []int{1}) {
				t.Errorf("closed %v, want [1]", got)
			}
			waitFor(t, "a replacement", func() bool { return r.Len() == 1 })
			if c, ok := r.Take(); !ok || c != 2 {
				t.Fatalf("Take gave %d, %v; want the replacement, 2", c, ok)
			}
		}},
		{"ok/idle-closed", func(t *testing.T, f *fakeConns) {
			r := NewReady(f.options(1, time.Millisecond))
			defer r.Close()
			r.Take()
			waitFor(t, "the unused one closed", func() bool { return len(f.closedOnes()) == 1 })
			if r.Len() != 0 {
				t.Errorf("%d ready after the idle time, want 0", r.Len())
			}
		}},
		{"ok/close", func(t *testing.T, f *fakeConns) {
			r := NewReady(f.options(2, time.Minute))
			r.Take()
			waitFor(t, "two ready", func() bool { return r.Len() == 2 })
			r.Close()
			if got := f.closedOnes(); !slices.Equal(got, []int{1, 2}) {
				t.Errorf("closed %v, want [1 2]", got)
			}
			if c, ok := r.Take(); ok {
				t.Errorf("Take after Close gave %d", c)
			}
		}},
		{"fail/open-fails", func(t *testing.T, f *fakeConns) {
			f.fail = true
			r := NewReady(f.options(1, time.Minute))
			defer r.Close()
			r.Take()
			r.Close() // waits for the opening under way
			if r.Len() != 0 {
				t.Errorf("%d ready after failed openings, want 0", r.Len())
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.run(t, &fakeConns{}) })
	}
}
