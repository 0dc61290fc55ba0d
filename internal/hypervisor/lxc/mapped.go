package lxc

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// mappedBy lists the block devices that map image file on this host: loop devices backed by it
// (how the LXC driver maps raw files) and nbd devices whose qemu-nbd server has it open (qcow2
// files). It reads the kernel's view under root ("/" in production) rather than parsing losetup
// or qemu-nbd output, and compares files by identity, so links and relative paths do not matter.
func mappedBy(root, file string) ([]string, error) {
	want, err := os.Stat(file)
	if err != nil {
		return nil, err
	}
	var out []string
	loops, _ := filepath.Glob(filepath.Join(root, "sys/block/loop*/loop/backing_file"))
	for _, bf := range loops {
		data, err := os.ReadFile(bf)
		if err != nil {
			continue // detached meanwhile
		}
		backing := strings.TrimSuffix(strings.TrimSpace(string(data)), " (deleted)")
		if fi, err := os.Stat(filepath.Join(root, backing)); err == nil && os.SameFile(fi, want) {
			out = append(out, "/dev/"+filepath.Base(filepath.Dir(filepath.Dir(bf))))
		}
	}
	nbds, _ := filepath.Glob(filepath.Join(root, "sys/block/nbd*/pid"))
	for _, pf := range nbds {
		data, err := os.ReadFile(pf)
		if err != nil {
			continue // not connected
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
		if err != nil {
			continue
		}
		fds, _ := filepath.Glob(filepath.Join(root, "proc", strconv.Itoa(pid), "fd", "*"))
		for _, fd := range fds {
			if fi, err := os.Stat(fd); err == nil && os.SameFile(fi, want) {
				out = append(out, fmt.Sprintf("/dev/%s served by qemu-nbd %d", filepath.Base(filepath.Dir(pf)), pid))
				break
			}
		}
	}
	return out, nil
}
