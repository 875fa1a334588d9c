package api

// PathBackup streams a consistent backup of the server's whole state (administrators only).
// The answer is a backup file (see `flotilla backup`); it holds the server's keys.
const PathBackup = "/v1/backup"
