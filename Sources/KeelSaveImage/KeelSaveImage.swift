// KeelSaveImage
