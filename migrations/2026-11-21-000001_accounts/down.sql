DROP TABLE otp_codes;
DROP TABLE refresh_tokens;
DROP TABLE device_sessions;
DROP TABLE users;
DROP EXTENSION IF EXISTS pg_trgm;
