//go:build !linux

package deferd

// settleCache does nothing off Linux (see operator_bench_linux_test.go).
func settleCache(dir string, keep map[string]bool) map[string]bool { return nil }
