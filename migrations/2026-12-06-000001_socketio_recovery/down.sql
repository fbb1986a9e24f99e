DROP TABLE socketio_sessions;
