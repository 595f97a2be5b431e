-- wrk script: asks for a new connection per request (Connection: close)
-- and prints the RESULT line of report.lua at the end. (On wrk's command
-- line the header must be written `-H 'Connection: close'`, with the
-- space; `-H Connection:close` is silently ignored.)
wrk.headers["Connection"] = "close"

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%d duration_us=%d p50=%d p99=%d p999=%d max=%d errors=%d status_errors=%d\n",
    summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.max,
    e.connect + e.read + e.write + e.timeout + e.status, e.status))
end
