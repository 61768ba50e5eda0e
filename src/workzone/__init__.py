"""workzone: road-work detection."""
