//! Prometheus metrics in the text exposition format (version 0.0.4), for `GET /metrics` on
//! the control socket. Written by hand: a few counters, gauges and histograms do not need
//! a metrics crate.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use crate::policy::Lists;
use crate::server::Resolver;
use crate::stats::Histogram;

/// The content type of the exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Builds one exposition text; each family is written with its HELP and TYPE once.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn labels(pairs: &[(&str, &str)]) -> String {
    if pairs.is_empty() {
        return String::new();
    }
    let inner: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    format!("{{{}}}", inner.join(","))
}

fn seconds(us: u64) -> String {
    format!("{}", us as f64 / 1e6)
}

impl Exposition {
    fn head(&mut self, name: &str, help: &str, kind: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    /// A family of samples of one kind (`counter` or `gauge`).
    pub fn family(
        &mut self,
        name: &str,
        help: &str,
        kind: &str,
        samples: &[(&[(&str, &str)], f64)],
    ) {
        self.head(name, help, kind);
        for (l, v) in samples {
            let _ = writeln!(self.out, "{name}{} {v}", labels(l));
        }
    }

    pub fn counter(&mut self, name: &str, help: &str, v: u64) {
        self.family(name, help, "counter", &[(&[], v as f64)]);
    }

    pub fn gauge(&mut self, name: &str, help: &str, v: f64) {
        self.family(name, help, "gauge", &[(&[], v)]);
    }

    /// A histogram family in seconds, from microsecond histograms.
    pub fn histogram(&mut self, name: &str, help: &str, samples: &[(&[(&str, &str)], &Histogram)]) {
        self.head(name, help, "histogram");
        for (l, h) in samples {
            for (bound, count) in h.cumulative() {
                let le = bound.map_or_else(|| "+Inf".to_owned(), seconds);
                let mut with_le: Vec<(&str, &str)> = l.to_vec();
                with_le.push(("le", &le));
                let _ = writeln!(self.out, "{name}_bucket{} {count}", labels(&with_le));
            }
            let _ = writeln!(self.out, "{name}_sum{} {}", labels(l), seconds(h.sum_us()));
            let _ = writeln!(self.out, "{name}_count{} {}", labels(l), h.count());
        }
    }

    pub fn finish(self) -> String {
        self.out
    }
}

/// Every metric of the resolver, its recorder and the lists in use.
pub fn render(resolver: &Resolver, lists: &Lists, uptime_s: f64) -> String {
    let mut e = Exposition::default();
    let s = resolver.stats();
    let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed) as f64;
    e.counter(
        "dnsd_queries_received_total",
        "Queries received.",
        s.total.load(Ordering::Relaxed),
    );
    e.family(
        "dnsd_queries_total",
        "Queries answered, by how.",
        "counter",
        &[
            (&[("outcome", "local")], get(&s.local)),
            (&[("outcome", "blocked")], get(&s.blocked)),
            (&[("outcome", "cached")], get(&s.cached)),
            (&[("outcome", "stale")], get(&s.stale)),
            (&[("outcome", "forwarded")], get(&s.forwarded)),
            (&[("outcome", "failed")], get(&s.failed)),
            (&[("outcome", "rejected")], get(&s.rejected)),
        ],
    );
    e.counter(
        "dnsd_queries_shed_total",
        "Queries dropped unanswered because too many were already being forwarded.",
        s.shed.load(Ordering::Relaxed),
    );
    e.counter(
        "dnsd_prefetches_total",
        "Popular cache entries refreshed before they expired.",
        s.prefetched.load(Ordering::Relaxed),
    );
    e.gauge(
        "dnsd_cache_entries",
        "Answers in the cache.",
        resolver.cache().len() as f64,
    );

    let ups = resolver.upstream_stats();
    let per_upstream =
        |f: &dyn Fn(&crate::server::UpstreamStats) -> f64| -> Vec<(Vec<(&str, &str)>, f64)> {
            ups.iter()
                .map(|u| (vec![("upstream", u.upstream.as_str())], f(u)))
                .collect()
        };
    for (name, help, kind, values) in [
        (
            "dnsd_upstream_answers_total",
            "Answers from each upstream.",
            "counter",
            per_upstream(&|u| u.successes as f64),
        ),
        (
            "dnsd_upstream_failures_total",
            "Failed tries per upstream (timeouts, network errors, REFUSED; a SERVFAIL is an answer).",
            "counter",
            per_upstream(&|u| u.failures as f64),
        ),
        (
            "dnsd_upstream_latency_average_seconds",
            "Moving average of each upstream's answer time.",
            "gauge",
            per_upstream(&|u| u.latency.as_secs_f64()),
        ),
    ] {
        let samples: Vec<(&[(&str, &str)], f64)> =
            values.iter().map(|(l, v)| (l.as_slice(), *v)).collect();
        e.family(name, help, kind, &samples);
    }

    let lists_samples: Vec<(Vec<(&str, &str)>, f64)> = lists
        .iter()
        .map(|(n, l)| (vec![("list", n.as_str())], l.len() as f64))
        .collect();
    let samples: Vec<(&[(&str, &str)], f64)> = lists_samples
        .iter()
        .map(|(l, v)| (l.as_slice(), *v))
        .collect();
    e.family(
        "dnsd_blocklist_rules",
        "Rules in each block list in use.",
        "gauge",
        &samples,
    );

    if let Some(rec) = resolver.recorder() {
        let t = rec.tables().clone();
        let q: Vec<(Vec<(&str, &str)>, &Histogram)> = t
            .query_latency
            .iter()
            .map(|(k, h)| (vec![("outcome", *k)], h))
            .collect();
        let q: Vec<(&[(&str, &str)], &Histogram)> =
            q.iter().map(|(l, h)| (l.as_slice(), *h)).collect();
        e.histogram(
            "dnsd_query_duration_seconds",
            "Time from a query's arrival to its answer, by outcome.",
            &q,
        );
        let u: Vec<(Vec<(&str, &str)>, &Histogram)> = t
            .upstream_latency
            .iter()
            .map(|(k, h)| (vec![("upstream", k.as_str())], h))
            .collect();
        let u: Vec<(&[(&str, &str)], &Histogram)> =
            u.iter().map(|(l, h)| (l.as_slice(), *h)).collect();
        e.histogram(
            "dnsd_upstream_duration_seconds",
            "Answer time of each upstream for forwarded queries.",
            &u,
        );
        e.counter(
            "dnsd_querylog_dropped_total",
            "Answered queries not logged because the log writer was behind.",
            rec.dropped(),
        );
        e.counter(
            "dnsd_querylog_write_errors_total",
            "Records the query log could not write to the disk.",
            rec.write_errors(),
        );
        if let Some(log) = rec.log() {
            e.gauge(
                "dnsd_querylog_records",
                "Records in the query log ring.",
                log.len() as f64,
            );
            e.gauge(
                "dnsd_querylog_capacity_records",
                "Records the query log ring holds at most.",
                log.capacity() as f64,
            );
        }
    }
    e.gauge(
        "dnsd_uptime_seconds",
        "Seconds since dnsd started.",
        uptime_s,
    );
    e.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_have_help_type_and_escaped_labels() {
        let mut e = Exposition::default();
        e.counter("x_total", "Xs.", 3);
        e.family(
            "y",
            "Ys.",
            "gauge",
            &[(&[("list", "a\"b\\c\nd")], 1.5), (&[("list", "e")], 0.0)],
        );
        assert_eq!(
            e.finish(),
            "# HELP x_total Xs.\n# TYPE x_total counter\nx_total 3\n\
             # HELP y Ys.\n# TYPE y gauge\ny{list=\"a\\\"b\\\\c\\nd\"} 1.5\ny{list=\"e\"} 0\n"
        );
    }

    #[test]
    fn histograms_are_cumulative_in_seconds() {
        let mut h = Histogram::default();
        h.observe(50);
        h.observe(300);
        h.observe(9_000_000);
        let mut e = Exposition::default();
        e.histogram("d_seconds", "D.", &[(&[("upstream", "u")], &h)]);
        let text = e.finish();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[2], "d_seconds_bucket{upstream=\"u\",le=\"0.0001\"} 1");
        assert_eq!(
            lines[3],
            "d_seconds_bucket{upstream=\"u\",le=\"0.00025\"} 1"
        );
        assert_eq!(lines[4], "d_seconds_bucket{upstream=\"u\",le=\"0.0005\"} 2");
        assert!(text.contains("d_seconds_bucket{upstream=\"u\",le=\"5\"} 2\n"));
        assert!(text.contains("d_seconds_bucket{upstream=\"u\",le=\"+Inf\"} 3\n"));
        assert!(text.contains("d_seconds_sum{upstream=\"u\"} 9.00035\n"));
        assert!(text.contains("d_seconds_count{upstream=\"u\"} 3\n"));
    }

    #[test]
    fn a_resolver_renders_every_family() {
        let cfg =
            appliance::load_str("version = 1\n[dns]\nupstreams = [\"127.0.0.1:5353\"]\n").unwrap();
        let policy = crate::policy::Policy::build(&cfg, &Lists::new()).unwrap();
        let rec = crate::stats::Recorder::start(None).unwrap();
        let r = Resolver::new(&cfg, std::sync::Arc::new(policy))
            .with_recorder(std::sync::Arc::new(rec));
        r.stats().blocked.fetch_add(2, Ordering::Relaxed);
        let text = render(&r, &Lists::new(), 1.0);
        assert!(
            text.contains("dnsd_queries_total{outcome=\"blocked\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("dnsd_upstream_failures_total{upstream=\"127.0.0.1:5353\"} 0\n"),
            "{text}"
        );
        for family in [
            "dnsd_query_duration_seconds histogram",
            "dnsd_querylog_dropped_total counter",
            "dnsd_cache_entries gauge",
        ] {
            assert!(
                text.contains(&format!("# TYPE {family}\n")),
                "{family}: {text}"
            );
        }
        // Every sample line is `name{labels} value` with a number.
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let v = l.rsplit(' ').next().unwrap();
            assert!(v.parse::<f64>().is_ok(), "{l}");
        }
    }
}
