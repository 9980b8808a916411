<?php
/**
 * Pressdock object cache (drop-in, installed by pressdock-agent; edits are lost).
 *
 * Redis through php-redis, as the site's ACL user, every key under the site's prefix
 * (PRESSDOCK_REDIS_PREFIX, "wp_<id>:"), the master found through Sentinel
 * (PRESSDOCK_REDIS_SENTINELS, PRESSDOCK_REDIS_MASTER_NAME). The site's ACL denies
 * FLUSHDB, SCAN and KEYS, so a flush bumps a version number that is part of every key;
 * keys of old versions expire (every key has a TTL of at most a day).
 * If Redis cannot be reached the cache degrades to a per-request array: the site keeps
 * working, only slower.
 */

if (!defined('ABSPATH')) {
    exit;
}

class WP_Object_Cache
{
    const MAX_TTL = 86400;

    public $cache = array();
    public $cache_hits = 0;
    public $cache_misses = 0;
    public $redis_calls = 0;
    public $redis_connected = false;

    private $redis = null;
    private $prefix = '';
    private $version = 1;
    private $global_groups = array();
    private $non_persistent_groups = array();
    private $blog_prefix = '1';
    private $multisite = false;

    public function __construct()
    {
        $this->multisite = is_multisite();
        $this->blog_prefix = $this->multisite ? (string) get_current_blog_id() : '1';
        $this->prefix = defined('PRESSDOCK_REDIS_PREFIX') ? PRESSDOCK_REDIS_PREFIX : 'wp:';
        $this->connect();
    }

    private function connect()
    {
        if (!class_exists('Redis') || !defined('PRESSDOCK_REDIS_SENTINELS')) {
            return;
        }
        $master = $this->discover_master();
        if ($master === null) {
            return;
        }
        try {
            $r = new Redis();
            // Persistent per php-fpm worker: no connection setup per request.
            if (!$r->pconnect($master[0], (int) $master[1], 0.5, 'pressdock-' . $this->prefix)) {
                return;
            }
            $r->setOption(Redis::OPT_READ_TIMEOUT, 1.0);
            if (!$r->auth(array(PRESSDOCK_REDIS_USER, PRESSDOCK_REDIS_PASSWORD))) {
                return;
            }
            $r->setOption(Redis::OPT_PREFIX, $this->prefix);
            // The version is a plain integer (INCR): read it before values are serialized.
            $r->setOption(Redis::OPT_SERIALIZER, Redis::SERIALIZER_NONE);
            $v = $r->get('__version');
            if ($v === false) {
                $r->set('__version', 1, array('nx'));
                $v = $r->get('__version');
            }
            $this->version = (int) $v;
            $r->setOption(Redis::OPT_SERIALIZER, Redis::SERIALIZER_PHP);
            $this->redis = $r;
            $this->redis_connected = true;
        } catch (Exception $e) {
            $this->redis = null;
            $this->redis_connected = false;
            // A failover demotes the old master: "READONLY" from a replica is caught
            // here and the next request asks Sentinel again.
            error_log('pressdock object cache: redis unavailable: ' . $e->getMessage());
        }
    }

    /** Asks each Sentinel in turn for the master's address. */
    private function discover_master()
    {
        foreach (PRESSDOCK_REDIS_SENTINELS as $hostport) {
            $i = strrpos($hostport, ':');
            if ($i === false) {
                continue;
            }
            try {
                // As the site's own user: the Sentinels answer nobody else, and this
                // user may only ask where the master is.
                $s = new RedisSentinel(
                    substr($hostport, 0, $i),
                    (int) substr($hostport, $i + 1),
                    0.3,
                    null,
                    0,
                    0.3,
                    array(PRESSDOCK_REDIS_USER, PRESSDOCK_REDIS_PASSWORD)
                );
                $addr = $s->getMasterAddrByName(PRESSDOCK_REDIS_MASTER_NAME);
                if (is_array($addr) && count($addr) === 2) {
                    return $addr;
                }
            } catch (Exception $e) {
                continue;
            }
        }
        return null;
    }

    private function key($key, $group)
    {
        if (empty($group)) {
            $group = 'default';
        }
        $scope = isset($this->global_groups[$group]) ? 'g' : $this->blog_prefix;
        return $this->version . ':' . $scope . ':' . $group . ':' . $key;
    }

    private function persistent($group)
    {
        return $this->redis !== null && !isset($this->non_persistent_groups[$group ? $group : 'default']);
    }

    private function ttl($expire)
    {
        $expire = (int) $expire;
        return ($expire <= 0 || $expire > self::MAX_TTL) ? self::MAX_TTL : $expire;
    }

    private function call($fn)
    {
        try {
            $this->redis_calls++;
            return $fn($this->redis);
        } catch (Exception $e) {
            error_log('pressdock object cache: ' . $e->getMessage());
            $this->redis = null;
            $this->redis_connected = false;
            return false;
        }
    }

    public function get($key, $group = 'default', $force = false, &$found = null)
    {
        $k = $this->key($key, $group);
        if (!$force && array_key_exists($k, $this->cache)) {
            $found = true;
            $this->cache_hits++;
            $v = $this->cache[$k];
            return is_object($v) ? clone $v : $v;
        }
        if (!$this->persistent($group)) {
            $found = false;
            $this->cache_misses++;
            return false;
        }
        $raw = $this->call(function ($r) use ($k) {
            return $r->get($k);
        });
        if ($raw === false || !is_array($raw) || !array_key_exists('v', $raw)) {
            $found = false;
            $this->cache_misses++;
            return false;
        }
        $found = true;
        $this->cache_hits++;
        $this->cache[$k] = $raw['v'];
        return $raw['v'];
    }

    public function get_multiple($keys, $group = 'default', $force = false)
    {
        $out = array();
        foreach ($keys as $key) {
            $out[$key] = $this->get($key, $group, $force);
        }
        return $out;
    }

    public function set($key, $data, $group = 'default', $expire = 0)
    {
        $k = $this->key($key, $group);
        if (is_object($data)) {
            $data = clone $data;
        }
        $this->cache[$k] = $data;
        if (!$this->persistent($group)) {
            return true;
        }
        $ttl = $this->ttl($expire);
        return (bool) $this->call(function ($r) use ($k, $data, $ttl) {
            // Wrapped so that a stored `false` is told from a miss.
            return $r->setex($k, $ttl, array('v' => $data));
        });
    }

    public function set_multiple($data, $group = 'default', $expire = 0)
    {
        $out = array();
        foreach ($data as $key => $value) {
            $out[$key] = $this->set($key, $value, $group, $expire);
        }
        return $out;
    }

    public function add($key, $data, $group = 'default', $expire = 0)
    {
        if (wp_suspend_cache_addition()) {
            return false;
        }
        $found = false;
        $this->get($key, $group, false, $found);
        if ($found) {
            return false;
        }
        return $this->set($key, $data, $group, $expire);
    }

    public function add_multiple($data, $group = 'default', $expire = 0)
    {
        $out = array();
        foreach ($data as $key => $value) {
            $out[$key] = $this->add($key, $value, $group, $expire);
        }
        return $out;
    }

    public function replace($key, $data, $group = 'default', $expire = 0)
    {
        $found = false;
        $this->get($key, $group, false, $found);
        if (!$found) {
            return false;
        }
        return $this->set($key, $data, $group, $expire);
    }

    public function delete($key, $group = 'default', $deprecated = false)
    {
        $k = $this->key($key, $group);
        $had = array_key_exists($k, $this->cache);
        unset($this->cache[$k]);
        if (!$this->persistent($group)) {
            return $had;
        }
        return (bool) $this->call(function ($r) use ($k) {
            return $r->del($k);
        }) || $had;
    }

    public function delete_multiple($keys, $group = 'default')
    {
        $out = array();
        foreach ($keys as $key) {
            $out[$key] = $this->delete($key, $group);
        }
        return $out;
    }

    public function incr($key, $offset = 1, $group = 'default')
    {
        $found = false;
        $v = $this->get($key, $group, false, $found);
        if (!$found) {
            return false;
        }
        $v = max(0, (is_numeric($v) ? (int) $v : 0) + (int) $offset);
        $this->set($key, $v, $group);
        return $v;
    }

    public function decr($key, $offset = 1, $group = 'default')
    {
        return $this->incr($key, -(int) $offset, $group);
    }

    /** Empties the site's cache: a new version makes every old key unreachable. */
    public function flush()
    {
        $this->cache = array();
        if ($this->redis === null) {
            return true;
        }
        $v = $this->call(function ($r) {
            return $r->incr('__version');
        });
        if ($v !== false) {
            $this->version = (int) $v;
        }
        return $v !== false;
    }

    public function flush_runtime()
    {
        $this->cache = array();
        return true;
    }

    public function flush_group($group)
    {
        // Per-group flushing would need SCAN, which the site's ACL denies.
        return $this->flush();
    }

    public function add_global_groups($groups)
    {
        foreach ((array) $groups as $g) {
            $this->global_groups[$g] = true;
        }
    }

    public function add_non_persistent_groups($groups)
    {
        foreach ((array) $groups as $g) {
            $this->non_persistent_groups[$g] = true;
        }
    }

    public function switch_to_blog($blog_id)
    {
        $this->blog_prefix = $this->multisite ? (string) (int) $blog_id : '1';
    }

    public function stats()
    {
        echo '<p><strong>Cache hits:</strong> ' . (int) $this->cache_hits . '<br />';
        echo '<strong>Cache misses:</strong> ' . (int) $this->cache_misses . '<br />';
        echo '<strong>Redis:</strong> ' . ($this->redis_connected ? 'connected' : 'not connected') . '</p>';
    }

    public function close()
    {
        // Persistent connection: kept for the worker's next request.
        return true;
    }
}

function wp_cache_init()
{
    $GLOBALS['wp_object_cache'] = new WP_Object_Cache();
}

function wp_cache_add($key, $data, $group = '', $expire = 0)
{
    return $GLOBALS['wp_object_cache']->add($key, $data, $group, $expire);
}

function wp_cache_add_multiple(array $data, $group = '', $expire = 0)
{
    return $GLOBALS['wp_object_cache']->add_multiple($data, $group, $expire);
}

function wp_cache_replace($key, $data, $group = '', $expire = 0)
{
    return $GLOBALS['wp_object_cache']->replace($key, $data, $group, $expire);
}

function wp_cache_set($key, $data, $group = '', $expire = 0)
{
    return $GLOBALS['wp_object_cache']->set($key, $data, $group, $expire);
}

function wp_cache_set_multiple(array $data, $group = '', $expire = 0)
{
    return $GLOBALS['wp_object_cache']->set_multiple($data, $group, $expire);
}

function wp_cache_get($key, $group = '', $force = false, &$found = null)
{
    return $GLOBALS['wp_object_cache']->get($key, $group, $force, $found);
}

function wp_cache_get_multiple($keys, $group = '', $force = false)
{
    return $GLOBALS['wp_object_cache']->get_multiple($keys, $group, $force);
}

function wp_cache_delete($key, $group = '')
{
    return $GLOBALS['wp_object_cache']->delete($key, $group);
}

function wp_cache_delete_multiple(array $keys, $group = '')
{
    return $GLOBALS['wp_object_cache']->delete_multiple($keys, $group);
}

function wp_cache_incr($key, $offset = 1, $group = '')
{
    return $GLOBALS['wp_object_cache']->incr($key, $offset, $group);
}

function wp_cache_decr($key, $offset = 1, $group = '')
{
    return $GLOBALS['wp_object_cache']->decr($key, $offset, $group);
}

function wp_cache_flush()
{
    return $GLOBALS['wp_object_cache']->flush();
}

function wp_cache_flush_runtime()
{
    return $GLOBALS['wp_object_cache']->flush_runtime();
}

function wp_cache_flush_group($group)
{
    return $GLOBALS['wp_object_cache']->flush_group($group);
}

function wp_cache_supports($feature)
{
    switch ($feature) {
        case 'add_multiple':
        case 'set_multiple':
        case 'get_multiple':
        case 'delete_multiple':
        case 'flush_runtime':
        case 'flush_group':
            return true;
        default:
            return false;
    }
}

function wp_cache_close()
{
    return $GLOBALS['wp_object_cache']->close();
}

function wp_cache_add_global_groups($groups)
{
    $GLOBALS['wp_object_cache']->add_global_groups($groups);
}

function wp_cache_add_non_persistent_groups($groups)
{
    $GLOBALS['wp_object_cache']->add_non_persistent_groups($groups);
}

function wp_cache_switch_to_blog($blog_id)
{
    $GLOBALS['wp_object_cache']->switch_to_blog($blog_id);
}

function wp_cache_reset()
{
    _deprecated_function(__FUNCTION__, '3.5.0', 'wp_cache_switch_to_blog()');
    $GLOBALS['wp_object_cache']->flush_runtime();
}
