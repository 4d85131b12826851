package relay

import (
	"errors"
	"fmt"
	"os"
	"syscall"
)

// Events a parked direction is woken by: bytes, the peer's shutdown, an
// error or a hang-up (the last two are always reported). EPOLLONESHOT: a
// socket wakes its direction once; the next park arms it again.
const parkEvents = syscall.EPOLLIN | syscall.EPOLLRDHUP | syscall.EPOLLONESHOT

// poller is a Parker's epoll instance. The instance is itself waited on
// in the runtime's network poller (an epoll file is readable while it has
// events to report), so that the Parker's goroutine waits as any
// connection's reader does: no thread is held in epoll_wait, and a
// wake-up is handled on the thread that found it.
type poller struct {
	fd    int
	file  *os.File        // owns fd
	raw   syscall.RawConn // file's
	wakes []syscall.EpollEvent
}

func (p *poller) open() error {
	fd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return fmt.Errorf("relay: epoll_create1: %w", err)
	}
	if err := syscall.SetNonblock(fd, true); err != nil {
		syscall.Close(fd)
		return fmt.Errorf("relay: epoll instance non-blocking: %w", err)
	}
	p.fd = fd
	p.file = os.NewFile(uintptr(fd), "relay-parker-epoll")
	if p.raw, err = p.file.SyscallConn(); err != nil {
		p.file.Close()
		return fmt.Errorf("relay: epoll instance: %w", err)
	}
	p.wakes = make([]syscall.EpollEvent, 128)
	return nil
}

func setID(ev *syscall.EpollEvent, id uint64) {
	ev.Fd, ev.Pad = int32(uint32(id)), int32(uint32(id>>32))
}

func eventID(ev *syscall.EpollEvent) uint64 {
	return uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
}

// add registers fd, a socket that a RawConn's Control hands out (which
// keeps it open for the call), to wake up once as id. A socket parked
// before is registered still, disarmed by its one wake-up: it is armed
// again. A socket's registration ends with its close. The Parker calls
// add only before close.
func (p *poller) add(fd uintptr, id uint64) error {
	ev := syscall.EpollEvent{Events: parkEvents}
	setID(&ev, id)
	err := syscall.EpollCtl(p.fd, syscall.EPOLL_CTL_MOD, int(fd), &ev)
	if err == syscall.ENOENT {
		err = syscall.EpollCtl(p.fd, syscall.EPOLL_CTL_ADD, int(fd), &ev)
	}
	return err
}

// run hands the id of each parked socket that becomes readable to ready,
// until wake. It takes every event the instance has, then waits in the
// runtime's poller until the instance is readable again.
func (p *poller) run(ready func(id uint64)) {
	_ = p.raw.Read(func(fd uintptr) bool {
		for {
			n, err := syscall.EpollWait(int(fd), p.wakes, 0)
			if err == syscall.EINTR {
				continue
			}
			if err != nil {
				return true // the instance is gone
			}
			for i := range n {
				ready(eventID(&p.wakes[i]))
			}
			if n < len(p.wakes) {
				return false
			}
		}
	})
}

// wake ends run: the instance's close wakes its wait.
func (p *poller) wake() error {
	if err := p.file.Close(); err != nil && !errors.Is(err, os.ErrClosed) {
		return fmt.Errorf("relay: close the epoll instance: %w", err)
	}
	return nil
}

func (p *poller) close() { _ = p.file.Close() }
