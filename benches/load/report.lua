-- wrk script: prints one machine-readable RESULT line at the end of a run
-- (wrk's --latency table stops at p99; this adds p99.9).
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%d duration_us=%d p50=%d p99=%d p999=%d max=%d errors=%d status_errors=%d\n",
    summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.max,
    e.connect + e.read + e.write + e.timeout + e.status, e.status))
end
