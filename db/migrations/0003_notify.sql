-- Fleet-wide cache invalidation: every keeld LISTENs on keel_user_changed and
-- drops the named user (Supabase id, or email for a user never signed in)
-- from its user-sync cache.  The trigger covers every change that alters
-- what a cached principal says: status, role, tier, email, or the row going
-- away.  keelctl evict sends the same notification itself.
CREATE FUNCTION keel_notify_user_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('keel_user_changed', COALESCE(OLD.supabase_user_id::text, OLD.email));
    IF TG_OP = 'UPDATE' AND NEW.email IS DISTINCT FROM OLD.email THEN
        PERFORM pg_notify('keel_user_changed', NEW.email);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER keel_user_changed
    AFTER UPDATE OF status, role, subscription_tier, email, supabase_user_id ON users
    FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status
          OR OLD.role IS DISTINCT FROM NEW.role
          OR OLD.subscription_tier IS DISTINCT FROM NEW.subscription_tier
          OR OLD.email IS DISTINCT FROM NEW.email
          OR OLD.supabase_user_id IS DISTINCT FROM NEW.supabase_user_id)
    EXECUTE FUNCTION keel_notify_user_changed();

CREATE TRIGGER keel_user_deleted
    AFTER DELETE ON users
    FOR EACH ROW
    EXECUTE FUNCTION keel_notify_user_changed();
