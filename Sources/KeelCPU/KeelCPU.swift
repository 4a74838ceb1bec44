// KeelCPU
