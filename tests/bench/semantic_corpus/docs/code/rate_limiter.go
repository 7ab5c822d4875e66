package limiter

import (
	"sync"
	"time"
)

// Bucket lets through at most Rate requests per second on average, with bursts of up to
// Capacity. Tokens drip into the bucket continuously; each request takes one. When the
// bucket is empty the request is refused (HTTP 429 in the middleware below).
type Bucket struct {
	mu       sync.Mutex
	Rate     float64
	Capacity float64
	tokens   float64
	last     time.Time
}

func New(rate, capacity float64) *Bucket {
	return &Bucket{Rate: rate, Capacity: capacity, tokens: capacity, last: time.Now()}
}

func (b *Bucket) Allow() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := time.Now()
	b.tokens += now.Sub(b.last).Seconds() * b.Rate
	if b.tokens > b.Capacity {
		b.tokens = b.Capacity
	}
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}
