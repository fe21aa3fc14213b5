"""The compute engine: budgets, throughput, memory, batching, blur and incremental inference that the analyses
run on."""
