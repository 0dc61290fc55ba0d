package hostwire

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Data sent to the host program over an ssh session's stdin (an in-place restore's images) is
// framed, so that the receiver can tell a complete stream from one cut short: when the frontend
// is killed, its ssh client still closes the session cleanly, and a plain EOF would look like the
// end of the data. A stream is chunks of a 4-byte big-endian length and that many bytes, then a
// zero length and the 8-byte total: anything else is an interrupted transfer.

const maxChunk = 1 << 20

// FrameWriter frames what is written to it; Close writes the end marker.
type FrameWriter struct {
	w     *bufio.Writer
	total uint64
}

// NewFrameWriter frames onto w.
func NewFrameWriter(w io.Writer) *FrameWriter {
	return &FrameWriter{w: bufio.NewWriterSize(w, maxChunk+4)}
}

func (f *FrameWriter) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		c := p[:min(len(p), maxChunk)]
		if _, err := f.w.Write(binary.BigEndian.AppendUint32(nil, uint32(len(c)))); err != nil {
			return n, err
		}
		if _, err := f.w.Write(c); err != nil {
			return n, err
		}
		n += len(c)
		f.total += uint64(len(c))
		p = p[len(c):]
	}
	return n, nil
}

// Close marks the stream complete (it does not close the underlying writer).
func (f *FrameWriter) Close() error {
	f.w.Write([]byte{0, 0, 0, 0})
	f.w.Write(binary.BigEndian.AppendUint64(nil, f.total))
	return f.w.Flush()
}

// ErrTruncated is a framed stream that ended before its end marker.
var ErrTruncated = errors.New("the stream ended before its end marker (the sender stopped)")

// CopyFramed copies a framed stream's data from r to w and returns its size; a stream cut short
// returns ErrTruncated.
func CopyFramed(w io.Writer, r io.Reader) (int64, error) {
	br := bufio.NewReaderSize(r, maxChunk+4)
	var hdr [8]byte
	buf := make([]byte, maxChunk)
	var total uint64
	for {
		if _, err := io.ReadFull(br, hdr[:4]); err != nil {
			return int64(total), ErrTruncated
		}
		n := binary.BigEndian.Uint32(hdr[:4])
		if n == 0 {
			if _, err := io.ReadFull(br, hdr[:8]); err != nil {
				return int64(total), ErrTruncated
			}
			if want := binary.BigEndian.Uint64(hdr[:8]); want != total {
				return int64(total), fmt.Errorf("the stream carried %d bytes, its end marker says %d", total, want)
			}
			return int64(total), nil
		}
		if n > maxChunk {
			return int64(total), fmt.Errorf("a chunk of %d bytes is larger than the %d allowed", n, maxChunk)
		}
		if _, err := io.ReadFull(br, buf[:n]); err != nil {
			return int64(total), ErrTruncated
		}
		if _, err := w.Write(buf[:n]); err != nil {
			return int64(total), err
		}
		total += uint64(n)
	}
}
