package smtpfront

// Refusal is what a listener sends to an SMTP connection it refuses
// before serving it (too many connections), instead of the greeting
// (RFC 5321 §3.1), then it closes.
const Refusal = "421 4.7.0 Too many connections, try again later\r\n"
