// Package audit owns the audit log: an HTTP middleware that records every mutating call and
// every denied call (who, what, on which object, from where, the answer, the request ID),
// never a body, a header's value or a credential; an asynchronous writer that keeps the
// records in the store (kind AuditRecord in the system namespace, never served as a resource)
// and optionally as JSON lines in a file, under a memory bound; pruning by age; and the
// admins' query endpoint GET /v1/audit.
package audit

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"flotilla.dev/api"
	"flotilla.dev/internal/auth"
	"flotilla.dev/internal/store"
)

// Kind is the stored kind of a record. The API refuses the namespace it lives in, and the kind
// is not one it serves.
const Kind = "AuditRecord"

// Namespace is where records are stored: the server's own namespace.
const Namespace = auth.SystemNamespace

// Defaults.
const (
	DefaultRetention  = 30 * 24 * time.Hour
	DefaultQueueSize  = 10000
	DefaultBatchSize  = 128
	DefaultPruneBatch = 1000
	// pruneBatches bounds one pruning pass to pruneBatches × PruneBatch records.
	pruneBatches = 10
)

// Config configures a Log.
type Config struct {
	Store store.Store
	// Retention is how long records are kept in the store; 0 means DefaultRetention.
	Retention time.Duration
	// File, if set, also receives every record as a JSON line ("-" is standard output).
	File string
	// QueueSize bounds the records waiting to be written; a record that finds the queue full is
	// dropped and counted. 0 means DefaultQueueSize.
	QueueSize int
	// BatchSize is how many records are written together; 0 means DefaultBatchSize.
	BatchSize int
	// PruneBatch is how many old records are deleted at a time; 0 means DefaultPruneBatch.
	PruneBatch int
	// PruneInterval is the time between pruning passes; 0 means a minute.
	PruneInterval time.Duration
	// Identify names the caller of a request whose handler did not (non-resource calls); it
	// is not asked for unauthenticated answers.
	Identify func(*http.Request) (user string, groups []string)
	Logger   *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Stats counts what happened to records since the Log was made.
type Stats struct {
	// Written to the store; Dropped because the queue was full (or the log closed); Failed
	// because the store refused them.
	Written, Dropped, Failed int64
}

// Log is a running audit log.
type Log struct {
	cfg      Config
	log      *slog.Logger
	identify func(*http.Request) (string, []string)
	q        chan *api.AuditRecord
	stop     chan struct{}
	done     chan struct{}
	closed   atomic.Bool
	once     sync.Once

	file    io.Writer
	closer  io.Closer
	written atomic.Int64
	dropped atomic.Int64
	failed  atomic.Int64
	// lastDropLog rate-limits the log line about drops (unix nanoseconds).
	lastDropLog atomic.Int64
	lastFailLog atomic.Int64
}

// New starts a Log's writer; Close stops it after writing what is queued.
func New(cfg Config) (*Log, error) {
	if cfg.Store == nil {
		return nil, errors.New("audit: no store")
	}
	if cfg.Retention <= 0 {
		cfg.Retention = DefaultRetention
	}
	if cfg.QueueSize <= 0 {
		cfg.QueueSize = DefaultQueueSize
	}
	if cfg.BatchSize <= 0 {
		cfg.BatchSize = DefaultBatchSize
	}
	if cfg.PruneBatch <= 0 {
		cfg.PruneBatch = DefaultPruneBatch
	}
	if cfg.PruneInterval <= 0 {
		cfg.PruneInterval = time.Minute
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	l := &Log{cfg: cfg, log: cfg.Logger, identify: cfg.Identify, q: make(chan *api.AuditRecord, cfg.QueueSize),
		stop: make(chan struct{}), done: make(chan struct{})}
	switch cfg.File {
	case "":
	case "-":
		l.file = os.Stdout
	default:
		f, err := os.OpenFile(cfg.File, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
		if err != nil {
			return nil, fmt.Errorf("opening the audit log file: %w", err)
		}
		l.file, l.closer = f, f
	}
	go l.run()
	return l, nil
}

// Stats returns the counts so far.
func (l *Log) Stats() Stats {
	return Stats{Written: l.written.Load(), Dropped: l.dropped.Load(), Failed: l.failed.Load()}
}

// Close stops taking records, writes those queued and closes the file. Call it after the HTTP
// server has shut down and before the store closes.
func (l *Log) Close() error {
	var err error
	l.once.Do(func() {
		l.closed.Store(true)
		close(l.stop)
		<-l.done
		if l.closer != nil {
			err = l.closer.Close()
		}
	})
	return err
}

// enqueue hands a record to the writer without ever waiting: a full queue drops it.
func (l *Log) enqueue(rec *api.AuditRecord) {
	if l.closed.Load() {
		l.drop(rec, "the audit log is closed")
		return
	}
	select {
	case l.q <- rec:
	default:
		l.drop(rec, "the audit queue is full")
	}
}

func (l *Log) drop(rec *api.AuditRecord, why string) {
	n := l.dropped.Add(1)
	if l.due(&l.lastDropLog) {
		l.log.Warn("audit record dropped", "reason", why, "droppedSoFar", n, "requestID", rec.RequestID,
			"user", rec.User, "verb", rec.Verb, "kind", rec.Kind, "name", rec.Name, "code", rec.Code)
	}
}

// due says whether a rate-limited log line may be written now (at most one each 10 s).
func (l *Log) due(last *atomic.Int64) bool {
	now := time.Now().UnixNano()
	prev := last.Load()
	return now-prev >= int64(10*time.Second) && last.CompareAndSwap(prev, now)
}

func (l *Log) run() {
	defer close(l.done)
	batch := make([]*api.AuditRecord, 0, l.cfg.BatchSize)
	for {
		select {
		case rec := <-l.q:
			batch = append(batch, rec)
		case <-l.stop:
			for {
				select {
				case rec := <-l.q:
					if batch = append(batch, rec); len(batch) < cap(batch) {
						continue
					}
				default:
				}
				if len(batch) > 0 {
					l.write(batch)
					batch = batch[:0]
				}
				if len(l.q) == 0 {
					return
				}
			}
		}
	fill:
		for len(batch) < cap(batch) {
			select {
			case rec := <-l.q:
				batch = append(batch, rec)
			default:
				break fill
			}
		}
		l.write(batch)
		batch = batch[:0]
	}
}

// write keeps a batch: as JSON lines in the file, then in the store, whose writer commits
// concurrent creates together.
func (l *Log) write(batch []*api.AuditRecord) {
	if l.file != nil {
		bw := bufio.NewWriter(l.file)
		enc := json.NewEncoder(bw)
		for _, rec := range batch {
			enc.Encode(rec)
		}
		if err := bw.Flush(); err != nil && l.due(&l.lastFailLog) {
			l.log.Error("writing the audit log file", "err", err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	for _, rec := range batch {
		wg.Go(func() {
			obj, err := toObject(rec)
			if err == nil {
				_, err = l.cfg.Store.Create(ctx, obj)
			}
			if err != nil {
				n := l.failed.Add(1)
				if l.due(&l.lastFailLog) {
					l.log.Error("storing an audit record", "err", err, "failedSoFar", n, "requestID", rec.RequestID)
				}
				return
			}
			l.written.Add(1)
		})
	}
	wg.Wait()
}

// Labels index the fields the query filters on.
const (
	labelUser    = "audit.flotilla.dev/user"
	labelVerb    = "audit.flotilla.dev/verb"
	labelKind    = "audit.flotilla.dev/kind"
	labelCode    = "audit.flotilla.dev/code"
	labelOutcome = "audit.flotilla.dev/outcome"
	labelHour    = "audit.flotilla.dev/hour"
)

const hourLayout = "2006010215"

func outcome(code int) string {
	switch {
	case code == http.StatusUnauthorized || code == http.StatusForbidden:
		return "denied"
	case code >= 400:
		return "error"
	}
	return "ok"
}

func toObject(rec *api.AuditRecord) (*api.Object, error) {
	raw, err := json.Marshal(rec)
	if err != nil {
		return nil, err
	}
	t := rec.Time.UTC()
	labels := map[string]string{
		labelVerb:    labelValue(rec.Verb),
		labelCode:    strconv.Itoa(rec.Code),
		labelOutcome: outcome(rec.Code),
		labelHour:    t.Format(hourLayout),
	}
	if rec.User != "" {
		labels[labelUser] = labelValue(rec.User)
	}
	if rec.Kind != "" {
		labels[labelKind] = labelValue(rec.Kind)
	}
	created := t.Truncate(time.Second)
	return &api.Object{
		TypeMeta: api.TypeMeta{APIVersion: api.APIVersion, Kind: Kind},
		// The name sorts by time and is unique: the request ID may repeat (a client's own).
		Metadata: api.ObjectMeta{Name: fmt.Sprintf("a%019d-%s", t.UnixNano(), randHex(6)), Namespace: Namespace,
			CreationTimestamp: &created, Labels: labels},
		Spec: raw,
	}, nil
}

// Collectors returns the Log's metrics.
func (l *Log) Collectors() []prometheus.Collector {
	return []prometheus.Collector{
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "flotilla_audit_records_written_total",
			Help: "Audit records written to the store."}, func() float64 { return float64(l.written.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "flotilla_audit_records_dropped_total",
			Help: "Audit records dropped because the write queue was full."}, func() float64 { return float64(l.dropped.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "flotilla_audit_records_failed_total",
			Help: "Audit records the store refused."}, func() float64 { return float64(l.failed.Load()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "flotilla_audit_queue_length",
			Help: "Audit records waiting to be written."}, func() float64 { return float64(len(l.q)) }),
	}
}
