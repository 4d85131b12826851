package store

import "time"

// SetJournalIdle sets how long j's flusher waits for a write once its
// queue is empty, before it ends.
func SetJournalIdle(j *Journal, d time.Duration) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.idleFor = d
}

// JournalRunning reports whether j's flusher goroutine runs.
func JournalRunning(j *Journal) bool {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.running
}

// JournalInFlight returns how many of j's writes have left the queue and
// are being committed (or retried) by the flusher.
func JournalInFlight(j *Journal) int {
	j.mu.Lock()
	defer j.mu.Unlock()
	return int(j.queued-j.done) - len(j.queue)
}

// SetJournalCloseWaits sets how long Close waits for j's writes, and
// then for the write it cancelled.
func SetJournalCloseWaits(j *Journal, wait, grace time.Duration) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.closeWait, j.closeGrace = wait, grace
}

// HoldJournalFlusher keeps j's flusher from starting: writes stay in the
// queue, untouched by the store, until release starts it. j must be new
// (no flusher yet).
func HoldJournalFlusher(j *Journal) (release func()) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.running {
		panic("store: HoldJournalFlusher on a Journal whose flusher runs")
	}
	j.running = true // enqueue starts no flusher
	return func() { go j.flushLoop() }
}
