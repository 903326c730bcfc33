package intern

import (
	"strconv"
	"sync"
	"testing"
	"unsafe"
)

func same(a, b string) bool { return unsafe.StringData(a) == unsafe.StringData(b) }

func TestZeroValueGet(t *testing.T) {
	var tab Table
	if tab.Len() != 0 {
		t.Fatalf("zero Table holds %d", tab.Len())
	}
	b := []byte("orders")
	s := tab.Get(b)
	if s != "orders" || tab.Len() != 1 {
		t.Fatalf("Get = %q, Len %d", s, tab.Len())
	}
	b[0] = 'X' // Get does not retain b
	if s != "orders" {
		t.Fatalf("the kept string aliases the caller's bytes: %q", s)
	}
	if s2 := tab.Get([]byte("orders")); s2 != s || !same(s, s2) {
		t.Fatal("a second Get of a known string did not return the kept copy")
	}
	if e := tab.Get(nil); e != "" {
		t.Fatalf("Get(nil) = %q", e)
	}
}

func TestMax(t *testing.T) {
	var tab Table
	kept := make([]string, Max)
	for i := range Max {
		kept[i] = tab.Get([]byte("t" + strconv.Itoa(i)))
	}
	if tab.Len() != Max {
		t.Fatalf("Len %d, want %d", tab.Len(), Max)
	}
	extra := tab.Get([]byte("one-too-many"))
	if extra != "one-too-many" || tab.Len() != Max {
		t.Fatalf("past Max: Get = %q, Len %d", extra, tab.Len())
	}
	if again := tab.Get([]byte("one-too-many")); again != extra || same(again, extra) {
		t.Fatal("a string past Max was kept")
	}
	for i, s := range kept {
		if g := tab.Get([]byte("t" + strconv.Itoa(i))); !same(g, s) {
			t.Fatalf("kept string %q is no longer shared", s)
		}
	}
}

// TestConcurrent has goroutines Get overlapping names, most of them new, while
// others read; each name is kept once and every Get returns its value.
func TestConcurrent(t *testing.T) {
	var tab Table
	const workers, names = 8, 500
	var wg sync.WaitGroup
	got := make([][]string, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got[w] = make([]string, names)
			for i := range names {
				n := (i + w*37) % names
				want := "topic-" + strconv.Itoa(n)
				s := tab.Get([]byte(want))
				if s != want {
					t.Errorf("Get(%q) = %q", want, s)
					return
				}
				got[w][n] = s
			}
		}()
	}
	wg.Wait()
	if tab.Len() != names {
		t.Fatalf("Len %d, want %d", tab.Len(), names)
	}
	for w := 1; w < workers; w++ {
		for n := range names {
			if !same(got[w][n], got[0][n]) {
				t.Fatalf("name %d kept twice", n)
			}
		}
	}
}
