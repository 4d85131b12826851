package revoke

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"
)

func TestWatchRevokesDeleted(t *testing.T) {
	reg := NewRegistry()
	ctxA, relA := reg.Track(context.Background(), 1)
	defer relA()
	ctxB, relB := reg.Track(context.Background(), 2)
	defer relB()
	ctxP, relP := reg.Track(context.Background(), 0) // primary: untracked
	defer relP()
	wctx, stop := context.WithCancel(context.Background())
	defer stop()
	var calls int
	go reg.Watch(wctx, 20*time.Millisecond, func(_ context.Context, ids []int64) (map[int64]bool, error) {
		calls++
		if calls == 1 {
			return nil, errors.New("database down")
		}
		return map[int64]bool{2: true}, nil
	}, func(error) {})
	select {
	case <-ctxA.Done():
	case <-time.After(time.Minute):
		t.Fatal("session of deleted app password 1 not closed")
	}
	if !errors.Is(context.Cause(ctxA), ErrRevoked) {
		t.Errorf("cause = %v", context.Cause(ctxA))
	}
	if ctxB.Err() != nil || ctxP.Err() != nil {
		t.Error("sessions of existing credentials were closed")
	}
}

// TestRegisterAndRelease: sessions registered under one app password are
// all ended by its revocation, a released one is not, and releases in any
// order (also after the revocation) leave nothing tracked.
func TestRegisterAndRelease(t *testing.T) {
	tests := []struct {
		name       string
		sessions   int
		release    []int // released before the revocation, by index
		wantEnded  int
		releaseAll bool // then release every session, after the revocation
	}{
		{"one", 1, nil, 1, true},
		{"three-none-released", 3, nil, 3, true},
		{"three-first-released", 3, []int{0}, 2, true},
		{"three-last-released", 3, []int{2}, 2, true},
		{"three-middle-and-first", 3, []int{1, 0}, 1, true},
		{"all-released", 2, []int{1, 0}, 0, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := NewRegistry()
			var ctxs []context.Context
			var releases []func()
			for range tc.sessions {
				ctx, cancel := context.WithCancelCause(context.Background())
				ctxs = append(ctxs, ctx)
				releases = append(releases, r.Register(7, cancel))
			}
			// Another app password's session is never touched.
			other, cancelOther := context.WithCancelCause(context.Background())
			releaseOther := r.Register(8, cancelOther)
			for _, i := range tc.release {
				releases[i]()
			}
			if got, want := r.Len(), tc.sessions-len(tc.release)+1; got != want {
				t.Fatalf("Len = %d, want %d", got, want)
			}
			if n := r.Revoke(7); n != tc.wantEnded {
				t.Errorf("Revoke = %d, want %d", n, tc.wantEnded)
			}
			ended := 0
			for i, ctx := range ctxs {
				released := slices.Contains(tc.release, i)
				switch cause := context.Cause(ctx); {
				case released && cause != nil:
					t.Errorf("session %d was released and still ended (%v)", i, cause)
				case !released && !errors.Is(cause, ErrRevoked):
					t.Errorf("session %d: cause %v, want ErrRevoked", i, cause)
				case !released:
					ended++
				}
			}
			if ended != tc.wantEnded {
				t.Errorf("%d sessions ended, want %d", ended, tc.wantEnded)
			}
			if tc.releaseAll {
				for _, rel := range releases {
					rel()
				}
			}
			if other.Err() != nil {
				t.Error("another app password's session ended")
			}
			releaseOther()
			if n := r.Len(); n != 0 {
				t.Errorf("Len = %d after every release", n)
			}
			if ids := r.IDs(); len(ids) != 0 {
				t.Errorf("IDs = %v after every release", ids)
			}
		})
	}
}
