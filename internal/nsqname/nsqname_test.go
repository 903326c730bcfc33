package nsqname

import (
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/nsqio/go-nsq"
)

// ValidTopic agrees with go-nsq's IsValidTopicName (nsqd's regexp),
// for strings and byte slices, on the edges and on random names over an
// alphabet that reaches them.
func TestValidTopicIsNSQs(t *testing.T) {
	names := []string{"", "a", "#ephemeral", "a#ephemeral", "a#ephemeral#ephemeral", "a#ephemera", "#ephemeralx",
		"a.b_c-D9", "a b", "a/b", "é", strings.Repeat("a", 64), strings.Repeat("a", 65),
		strings.Repeat("a", 54) + "#ephemeral", strings.Repeat("a", 55) + "#ephemeral", "a\n", "a#"}
	alphabet := []string{"a", "Z", "0", ".", "_", "-", "#", "ephemeral", "#ephemeral", " ", "\xff", "/"}
	r := rand.New(rand.NewPCG(1, 2))
	for range 20000 {
		var b strings.Builder
		for range r.IntN(8) {
			b.WriteString(alphabet[r.IntN(len(alphabet))])
		}
		names = append(names, b.String())
	}
	for _, n := range names {
		want := nsq.IsValidTopicName(n)
		if got := ValidTopic(n); got != want {
			t.Fatalf("ValidTopic(%q) = %v, go-nsq says %v", n, got, want)
		}
		if got := ValidTopic([]byte(n)); got != want {
			t.Fatalf("ValidTopic([]byte(%q)) = %v, go-nsq says %v", n, got, want)
		}
	}
}
