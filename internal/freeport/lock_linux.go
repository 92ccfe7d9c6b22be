package freeport

import (
	"errors"
	"os"

	"golang.org/x/sys/unix"
)

// lockByte takes a write lock on byte p of f, without waiting: false if
// another open file description holds it. Open-file-description locks (not
// classic POSIX record locks) so that a lock is not dropped when some other
// descriptor of the file in this process is closed.
func lockByte(f *os.File, p int) (bool, error) {
	err := unix.FcntlFlock(f.Fd(), unix.F_OFD_SETLK, &unix.Flock_t{Type: unix.F_WRLCK, Start: int64(p), Len: 1})
	if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EACCES) {
		return false, nil
	}
	return err == nil, err
}

func unlockByte(f *os.File, p int) error {
	return unix.FcntlFlock(f.Fd(), unix.F_OFD_SETLK, &unix.Flock_t{Type: unix.F_UNLCK, Start: int64(p), Len: 1})
}
