//go:build !linux

package dial

// setQuickAck does nothing where TCP_QUICKACK does not exist.
func setQuickAck(uintptr) bool { return false }
