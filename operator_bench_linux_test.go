package deferd

import (
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// settleCache writes out the dirty pages (sync(2)) and drops from the page
// cache the journal segments under dir not in keep, so a benchmark phase
// that writes the journal starts with as much free memory as the one
// before. It returns the segments it saw.
func settleCache(dir string, keep map[string]bool) map[string]bool {
	syscall.Sync()
	seen := map[string]bool{}
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(p, ".seg") {
			return nil
		}
		seen[p] = true
		if keep[p] {
			return nil
		}
		if f, err := os.Open(p); err == nil {
			const fadvDontNeed = 4
			syscall.Syscall6(syscall.SYS_FADVISE64, f.Fd(), 0, 0, fadvDontNeed, 0, 0)
			f.Close()
		}
		return nil
	})
	return seen
}
