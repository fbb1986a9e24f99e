// @generated automatically by Diesel CLI.

diesel::table! {
    audit_log (id) {
        id -> Int8,
        actor_id -> Nullable<Int8>,
        action -> Text,
        target_type -> Text,
        target_id -> Nullable<Text>,
        details -> Jsonb,
        ip -> Nullable<Text>,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    call_participants (call_id, user_id) {
        call_id -> Text,
        user_id -> Int8,
        role -> Text,
        status -> Text,
        device_session_id -> Nullable<Text>,
        invited_at -> Timestamptz,
        joined_at -> Nullable<Timestamptz>,
        left_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    calls (id) {
        id -> Text,
        kind -> Text,
        call_type -> Text,
        provider -> Text,
        channel_name -> Nullable<Text>,
        caller_id -> Nullable<Int8>,
        conversation_id -> Nullable<Int8>,
        status -> Text,
        end_reason -> Nullable<Text>,
        ended_by -> Nullable<Int8>,
        created_at -> Timestamptz,
        ringing_at -> Nullable<Timestamptz>,
        answered_at -> Nullable<Timestamptz>,
        ended_at -> Nullable<Timestamptz>,
        duration_secs -> Nullable<Int4>,
    }
}

diesel::table! {
    chat_requests (id) {
        id -> Int8,
        from_user_id -> Int8,
        to_user_id -> Int8,
        message -> Nullable<Text>,
        status -> Text,
        conversation_id -> Nullable<Int8>,
        created_at -> Timestamptz,
        responded_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    contacts (owner_id, phone) {
        owner_id -> Int8,
        phone -> Text,
        name -> Nullable<Text>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    conversation_members (conversation_id, user_id) {
        conversation_id -> Int8,
        user_id -> Int8,
        role -> Text,
        joined_at -> Timestamptz,
        delivered_up_to -> Int8,
        read_up_to -> Int8,
        delivered_at -> Nullable<Timestamptz>,
        read_at -> Nullable<Timestamptz>,
        receipt_change -> Int8,
    }
}

diesel::table! {
    conversations (id) {
        id -> Int8,
        kind -> Text,
        title -> Nullable<Text>,
        avatar_url -> Nullable<Text>,
        participant_key -> Nullable<Text>,
        team_role -> Nullable<Text>,
        context_type -> Nullable<Text>,
        context_id -> Nullable<Text>,
        created_by -> Nullable<Int8>,
        last_seq -> Int8,
        last_change -> Int8,
        last_message_at -> Nullable<Timestamptz>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        support_user_id -> Nullable<Int8>,
    }
}

diesel::table! {
    device_sessions (id) {
        id -> Text,
        user_id -> Int8,
        device_name -> Nullable<Text>,
        user_agent -> Nullable<Text>,
        ip -> Nullable<Text>,
        created_at -> Timestamptz,
        last_used_at -> Timestamptz,
        revoked_at -> Nullable<Timestamptz>,
        revoked_reason -> Nullable<Text>,
    }
}

diesel::table! {
    legacy_ids (source, legacy_id) {
        source -> Text,
        legacy_id -> Text,
        kind -> Text,
        id -> Int8,
        imported_at -> Timestamptz,
    }
}

diesel::table! {
    media (id) {
        id -> Text,
        owner_id -> Int8,
        kind -> Text,
        content_type -> Text,
        size -> Int8,
        sha256 -> Text,
        filename -> Nullable<Text>,
        width -> Nullable<Int4>,
        height -> Nullable<Int4>,
        duration_ms -> Nullable<Int8>,
        thumbnail_size -> Nullable<Int8>,
        thumbnail_type -> Nullable<Text>,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    messages (id) {
        id -> Int8,
        conversation_id -> Int8,
        seq -> Int8,
        change_seq -> Int8,
        sender_id -> Nullable<Int8>,
        kind -> Text,
        content -> Text,
        media_url -> Nullable<Text>,
        reply_to_id -> Nullable<Int8>,
        metadata -> Nullable<Jsonb>,
        client_message_id -> Nullable<Text>,
        created_at -> Timestamptz,
        edited_at -> Nullable<Timestamptz>,
        deleted_at -> Nullable<Timestamptz>,
        deleted_by -> Nullable<Int8>,
        sender_type -> Nullable<Text>,
        recipient_id -> Nullable<Int8>,
        recipient_type -> Nullable<Text>,
        media_id -> Nullable<Text>,
        media -> Nullable<Jsonb>,
        legacy_id -> Nullable<Text>,
    }
}

diesel::table! {
    otp_codes (id) {
        id -> Int8,
        phone -> Text,
        purpose -> Text,
        code_hash -> Bytea,
        attempts -> Int4,
        created_at -> Timestamptz,
        expires_at -> Timestamptz,
        consumed_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    refresh_tokens (token_hash) {
        token_hash -> Bytea,
        session_id -> Text,
        created_at -> Timestamptz,
        expires_at -> Timestamptz,
        rotated_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    socketio_sessions (pid_hash) {
        pid_hash -> Bytea,
        user_id -> Int8,
        sid -> Text,
        dialect -> Text,
        connected_at -> Timestamptz,
        disconnected_at -> Timestamptz,
        expires_at -> Timestamptz,
        state -> Jsonb,
    }
}

diesel::table! {
    users (id) {
        id -> Int8,
        name -> Text,
        phone -> Nullable<Text>,
        email -> Nullable<Text>,
        avatar_url -> Nullable<Text>,
        password_hash -> Nullable<Text>,
        roles -> Array<Nullable<Text>>,
        team_roles -> Array<Nullable<Text>>,
        banned_at -> Nullable<Timestamptz>,
        ban_reason -> Nullable<Text>,
        last_seen_at -> Nullable<Timestamptz>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        tokens_valid_after -> Nullable<Timestamptz>,
        legacy_source -> Nullable<Text>,
    }
}

diesel::joinable!(audit_log -> users (actor_id));
diesel::joinable!(call_participants -> calls (call_id));
diesel::joinable!(call_participants -> users (user_id));
diesel::joinable!(calls -> conversations (conversation_id));
diesel::joinable!(chat_requests -> conversations (conversation_id));
diesel::joinable!(contacts -> users (owner_id));
diesel::joinable!(conversation_members -> conversations (conversation_id));
diesel::joinable!(conversation_members -> users (user_id));
diesel::joinable!(device_sessions -> users (user_id));
diesel::joinable!(media -> users (owner_id));
diesel::joinable!(messages -> conversations (conversation_id));
diesel::joinable!(refresh_tokens -> device_sessions (session_id));
diesel::joinable!(socketio_sessions -> users (user_id));

diesel::allow_tables_to_appear_in_same_query!(
    audit_log,
    call_participants,
    calls,
    chat_requests,
    contacts,
    conversation_members,
    conversations,
    device_sessions,
    legacy_ids,
    media,
    messages,
    otp_codes,
    refresh_tokens,
    socketio_sessions,
    users,
);
