package relay

import (
	"fmt"
	"syscall"
)

// Events a parked direction is woken by: bytes, the peer's shutdown, an
// error or a hang-up (the last two are always reported). EPOLLONESHOT: a
// socket wakes its direction once; the next park registers it again.
const parkEvents = syscall.EPOLLIN | syscall.EPOLLRDHUP | syscall.EPOLLONESHOT

// poller is a Parker's epoll instance, with a pipe that wakes its wait
// for Close.
type poller struct {
	fd    int
	pipe  [2]int
	wakes []syscall.EpollEvent
}

// wakeID is the id of the poller's own pipe.
const wakeID = 0

func (p *poller) open() error {
	fd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return fmt.Errorf("relay: epoll_create1: %w", err)
	}
	if err := syscall.Pipe2(p.pipe[:], syscall.O_CLOEXEC|syscall.O_NONBLOCK); err != nil {
		syscall.Close(fd)
		return fmt.Errorf("relay: pipe2: %w", err)
	}
	p.fd = fd
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN}
	setID(&ev, wakeID)
	if err := syscall.EpollCtl(fd, syscall.EPOLL_CTL_ADD, p.pipe[0], &ev); err != nil {
		p.close()
		return fmt.Errorf("relay: epoll_ctl of the wake-up pipe: %w", err)
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
// again. A socket's registration ends with its close.
func (p *poller) add(fd uintptr, id uint64) error {
	ev := syscall.EpollEvent{Events: parkEvents}
	setID(&ev, id)
	err := syscall.EpollCtl(p.fd, syscall.EPOLL_CTL_MOD, int(fd), &ev)
	if err == syscall.ENOENT {
		err = syscall.EpollCtl(p.fd, syscall.EPOLL_CTL_ADD, int(fd), &ev)
	}
	return err
}

// run waits for parked sockets and hands each one's id to ready, until
// wake.
func (p *poller) run(ready func(id uint64)) {
	for {
		n, err := syscall.EpollWait(p.fd, p.wakes, -1)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			// EBADF or EINVAL: the instance is gone; nothing parks
			// in it any more that could wake.
			return
		}
		for i := range n {
			id := eventID(&p.wakes[i])
			if id == wakeID {
				return
			}
			ready(id)
		}
	}
}

// wake ends run.
func (p *poller) wake() error {
	_, err := syscall.Write(p.pipe[1], []byte{0})
	if err != nil && err != syscall.EAGAIN {
		return fmt.Errorf("relay: wake the poller: %w", err)
	}
	return nil
}

func (p *poller) close() {
	syscall.Close(p.fd)
	syscall.Close(p.pipe[0])
	syscall.Close(p.pipe[1])
}
