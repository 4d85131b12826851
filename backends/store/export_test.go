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
