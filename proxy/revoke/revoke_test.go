package revoke

import (
	"context"
	"errors"
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
