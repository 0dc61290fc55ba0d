// Package qcow2 turns backup chains (a full qcow2 image and increments holding only changed
// clusters) into standalone images with qemu-img, without ever modifying a stored file: the
// chain's backing order is given to qemu-img explicitly instead of being written into headers.
package qcow2

import (
	"encoding/json"
	"errors"
)

// layer is a qcow2 blockdev description with an explicit backing layer (nil: none).
type layer struct {
	Driver  string            `json:"driver"`
	File    map[string]string `json:"file"`
	Backing *layer            `json:"backing"`
}

// ChainSpec describes files (oldest first) as one image: each file backed by the one before it,
// whatever their headers say. The result is a "json:" filename qemu-img accepts.
func ChainSpec(files []string) (string, error) {
	if len(files) == 0 {
		return "", errors.New("empty chain")
	}
	var top *layer
	for _, f := range files {
		top = &layer{Driver: "qcow2", File: map[string]string{"driver": "file", "filename": f}, Backing: top}
	}
	data, err := json.Marshal(top)
	if err != nil {
		return "", err
	}
	return "json:" + string(data), nil
}

// MergeArgs is the qemu-img command that writes the chain files (oldest first) as one standalone
// qcow2 image at dst. With one file it is a plain copy that drops any recorded backing file.
func MergeArgs(files []string, dst string) ([]string, error) {
	spec, err := ChainSpec(files)
	if err != nil {
		return nil, err
	}
	return []string{"qemu-img", "convert", "-q", "-O", "qcow2", spec, dst}, nil
}

// CommitArgs are the qemu-img commands that merge a chain of private copies (oldest first) into
// the first one, in place: each file is pointed at the one before it, then the newest is
// committed down to the first. Only for temporary copies: stored files must never be modified.
func CommitArgs(files []string) [][]string {
	var cmds [][]string
	for i := 1; i < len(files); i++ {
		cmds = append(cmds, []string{"qemu-img", "rebase", "-u", "-f", "qcow2", "-F", "qcow2", "-b", files[i-1], files[i]})
	}
	if len(files) > 1 {
		cmds = append(cmds, []string{"qemu-img", "commit", "-q", "-f", "qcow2", "-b", files[0], files[len(files)-1]})
	}
	return cmds
}
