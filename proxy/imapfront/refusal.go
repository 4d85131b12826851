package imapfront

// Refusal is what a listener sends to an IMAP connection it refuses
// before serving it (too many connections), instead of the greeting
// (RFC 9051 §7.1.5), then it closes.
const Refusal = "* BYE Too many connections, try again later\r\n"
