package main

import (
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
	"time"
)

// report is what a soak measured.
type report struct {
	workers   int
	duration  time.Duration
	elapsed   time.Duration // from the start of the load until its last attempt ended
	stats     *stats
	samples   [][]sample // per instance: idle before, after warm-up, end of load, idle after
	audit     map[string]int
	lockouts  int
	logErrors [][2]int // per instance: ERROR lines, panics
}

var sampleNames = []string{"idle before", "after warm-up", "end of load", "idle after"}

func (r *report) print(w io.Writer) {
	s := r.stats
	s.mu.Lock()
	defer s.mu.Unlock()
	total, ok := 0, 0
	for k, v := range s.audit {
		total += v
		if !strings.Contains(k, "refused") {
			ok += v
		}
	}
	secs := r.elapsed.Seconds()
	fmt.Fprintf(w, "soak: 2 passgate instances behind HAProxy (PROXY v2) on PostgreSQL, Dovecot, Postfix, slapd; %d workers + %d guessers; %s\n",
		r.workers, len(attackAddrs), r.duration)
	fmt.Fprintf(w, "logins: %d in %.1f s = %.1f/s (%.1f/s good, %.1f/s wrong secrets)\n", total, secs, float64(total)/secs, float64(ok)/secs, float64(total-ok)/secs)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "login latency (command to reply)\tn\tp50\tp99\t")
	keys := make([]string, 0, len(s.latency))
	for k := range s.latency {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		d := slices.Clone(s.latency[k])
		slices.Sort(d)
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t\n", k, len(d), ms(d[len(d)/2]), ms(d[len(d)*99/100]))
	}
	tw.Flush()
	for _, k := range sortedKeys(s.done) {
		fmt.Fprintf(w, "%s: %d\n", k, s.done[k])
	}
	fmt.Fprintf(w, "unexpected failures: %d\n", s.unexpected)
	for _, e := range s.examples {
		fmt.Fprintf(w, "  %s\n", e)
	}
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "audit login events\tattempts\tevents\t")
	all := map[string]bool{}
	for k := range s.audit {
		all[k] = true
	}
	for k := range r.audit {
		all[k] = true
	}
	for _, k := range sortedKeys(all) {
		fmt.Fprintf(tw, "%s\t%d\t%d\t\n", k, s.audit[k], r.audit[k])
	}
	tw.Flush()
	fmt.Fprintf(w, "lockout refusals among the wrong secrets (audit reason): %d\n", r.lockouts)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "instance\t%s\t\n", strings.Join(sampleNames, "\t"))
	for i, ss := range r.samples {
		fmt.Fprintf(tw, "%d RSS", i+1)
		for _, x := range ss {
			fmt.Fprintf(tw, "\t%.1f MiB", float64(x.rss)/(1<<20))
		}
		fmt.Fprintf(tw, "\t\n%d goroutines", i+1)
		for _, x := range ss {
			fmt.Fprintf(tw, "\t%d", x.goroutines)
		}
		fmt.Fprintln(tw, "\t")
	}
	tw.Flush()
	for i, e := range r.logErrors {
		fmt.Fprintf(w, "instance %d log: %d ERROR lines, %d panics\n", i+1, e[0], e[1])
	}
}

// problems lists what makes the soak fail.
func (r *report) problems() []string {
	var p []string
	if n := r.stats.unexpected; n > 0 {
		p = append(p, fmt.Sprintf("%d unexpected failures", n))
	}
	if !equalCounts(r.audit, r.stats.attempts()) {
		p = append(p, "the audit trail does not hold exactly one login event per attempt")
	}
	for i, ss := range r.samples {
		if len(ss) != len(sampleNames) {
			p = append(p, fmt.Sprintf("instance %d: %d samples", i+1, len(ss)))
			continue
		}
		if limit := int64(float64(ss[1].rss)*rssGrowthFactor) + rssGrowthSlack; ss[2].rss > limit {
			p = append(p, fmt.Sprintf("instance %d: RSS grew from %.1f MiB after the warm-up to %.1f MiB at the end of the load (bound %.1f MiB)",
				i+1, float64(ss[1].rss)/(1<<20), float64(ss[2].rss)/(1<<20), float64(limit)/(1<<20)))
		}
		if ss[3].goroutines > ss[0].goroutines+goroutineSlack {
			p = append(p, fmt.Sprintf("instance %d: %d goroutines idle after the load, %d before (bound +%d)",
				i+1, ss[3].goroutines, ss[0].goroutines, goroutineSlack))
		}
	}
	for i, e := range r.logErrors {
		if e[1] > 0 {
			p = append(p, fmt.Sprintf("instance %d logged a panic", i+1))
		}
	}
	return p
}

func sortedKeys[V any](m map[string]V) []string {
	k := make([]string, 0, len(m))
	for x := range m {
		k = append(k, x)
	}
	sort.Strings(k)
	return k
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d.Microseconds())/1000) }
