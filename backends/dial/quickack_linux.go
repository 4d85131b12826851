package dial

import "syscall"

// setQuickAck sets TCP_QUICKACK on the socket fd.
func setQuickAck(fd uintptr) bool {
	return syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_QUICKACK, 1) == nil
}
