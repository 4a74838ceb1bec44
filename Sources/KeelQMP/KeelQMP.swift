// KeelQMP
