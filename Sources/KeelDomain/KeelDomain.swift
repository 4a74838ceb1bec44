// KeelDomain
