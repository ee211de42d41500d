"""SlimServe benchmarks: each module is one command that writes JSON and a Markdown table."""
