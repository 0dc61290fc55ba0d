package backend

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"onebackup/internal/remote"
)

// DiskUsage runs df on the filesystem holding dir on t (creating dir first when missing).
func DiskUsage(ctx context.Context, rt *Runtime, t remote.Target, dir string) (Usage, error) {
	df := remote.Cmd{Target: t, Argv: []string{"df", "-Pk", "--", dir + "/"}}
	res, err := rt.Run(ctx, df, false)
	if err != nil {
		if _, mkErr := rt.Run(ctx, remote.Cmd{Target: t, Argv: []string{"mkdir", "-p", "--", dir}}, true); mkErr != nil {
			return Usage{}, fmt.Errorf("cannot read the capacity of %s on %s: %w", dir, t, err)
		}
		if res, err = rt.Run(ctx, df, false); err != nil {
			return Usage{}, fmt.Errorf("cannot read the capacity of %s on %s: %w", dir, t, err)
		}
	}
	if rt.DryRun {
		return Usage{}, nil
	}
	return parseDF(res.Stdout)
}

// parseDF reads the last line of `df -Pk`: 1K-blocks, used, available in fields 2 to 4.
func parseDF(out []byte) (Usage, error) {
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	f := strings.Fields(lines[len(lines)-1])
	if len(lines) < 2 || len(f) < 4 {
		return Usage{}, fmt.Errorf("unexpected df output: %q", strings.TrimSpace(string(out)))
	}
	var kib [3]int64
	for i := range kib {
		n, err := strconv.ParseInt(f[i+1], 10, 64)
		if err != nil {
			return Usage{}, fmt.Errorf("unexpected df output: %q", lines[len(lines)-1])
		}
		kib[i] = n
	}
	return Usage{TotalMB: kib[0] >> 10, UsedMB: kib[1] >> 10, FreeMB: kib[2] >> 10}, nil
}
