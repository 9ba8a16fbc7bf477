"""How run events look on the wire: encoded once when logged, then sent as bytes by every transport."""
