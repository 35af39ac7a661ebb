# Sourced by the benchmark scripts: ingest's own answer times, from its
# dovewarden_ingest_request_duration_seconds histogram.

# buckets URL: the histogram at URL (a /metrics), "LE COUNT" summed over
# codes.
buckets() {
	curl -fsS "$1" |
		awk '/^dovewarden_ingest_request_duration_seconds_bucket/ { match($0, /le="[^"]*"/); le = substr($0, RSTART + 4, RLENGTH - 5); n[le] += $NF }
			END { for (le in n) print le, n[le] }'
}

# answers BEFORE AFTER: p50 and p99 of the answers timed between two
# buckets outputs (linear within a bucket, as Prometheus's
# histogram_quantile).
answers() {
	awk 'FILENAME == ARGV[1] { n0[$1] = $2; next } { print ($1 == "+Inf" ? "inf" : $1), $2 - n0[$1] }' "$1" "$2" | sort -g |
		awk '{ le[NR] = $1; c[NR] = $2 } END {
			if (c[NR] == 0) { print "  answered  nothing (ingest, by its own histogram)"; exit }
			for (i = 1; i <= 2; i++) {
				q = (i == 1 ? 0.5 : 0.99); r = q * c[NR]; lo = 0; below = 0
				for (j = 1; j <= NR && c[j] < r; j++) { lo = le[j]; below = c[j] }
				v = (le[j] == "inf") ? "over " lo * 1000 : sprintf("%.2f", (lo + (le[j] - lo) * (r - below) / (c[j] - below)) * 1000)
				out = out sprintf("%s%s %s ms", (i == 1 ? "" : ", "), (i == 1 ? "p50" : "p99"), v)
			}
			printf "  answered  in %s (ingest, by its own histogram)\n", out }'
}
