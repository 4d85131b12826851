//go:build !linux

package relay

// poller: none on this platform.
type poller struct{}

func (p *poller) open() error                     { return ErrNoParking }
func (p *poller) add(fd uintptr, id uint64) error { return ErrNoParking }
func (p *poller) run(ready func(id uint64))       {}
func (p *poller) wake() error                     { return nil }
func (p *poller) close()                          {}
