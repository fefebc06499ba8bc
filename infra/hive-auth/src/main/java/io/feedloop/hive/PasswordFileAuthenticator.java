package io.feedloop.hive;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.GeneralSecurityException;
import java.security.MessageDigest;
import java.util.HexFormat;
import java.util.List;
import javax.crypto.SecretKeyFactory;
import javax.crypto.spec.PBEKeySpec;
import javax.security.sasl.AuthenticationException;

import org.apache.hive.service.auth.PasswdAuthenticationProvider;

/**
 * HiveServer2 CUSTOM authentication against a file of salted PBKDF2 hashes.
 *
 * <p>The file is named by the environment variable FEEDLOOP_HIVE_PASSWORD_FILE and
 * written by `feedloop up` from the settings (hive.user / hive.password and
 * hive.analyst_user / hive.analyst_password).  One line per user:
 *
 * <pre>user pbkdf2-sha256 iterations salt-hex hash-hex</pre>
 *
 * <p>The file is read at every login, so a rotated password takes effect without a
 * restart.  Every failure (no file, unknown user, wrong password) is refused with the
 * same message, so a client cannot tell which users exist.
 */
public final class PasswordFileAuthenticator implements PasswdAuthenticationProvider {
    static final String ENV = "FEEDLOOP_HIVE_PASSWORD_FILE";
    private static final String REFUSED = "feedloop: wrong Hive user or password";

    @Override
    public void Authenticate(String user, String password) throws AuthenticationException {
        String file = System.getenv(ENV);
        if (file == null || file.isEmpty()) {
            throw new AuthenticationException("feedloop: " + ENV + " is not set; every login is refused");
        }
        List<String> lines;
        try {
            lines = Files.readAllLines(Path.of(file), StandardCharsets.UTF_8);
        } catch (IOException e) {
            throw new AuthenticationException("feedloop: cannot read the Hive password file " + file, e);
        }
        if (user == null || password == null) {
            throw new AuthenticationException(REFUSED);
        }
        for (String line : lines) {
            String[] f = line.trim().split("\\s+");
            if (f.length != 5 || !f[0].equals(user) || !f[1].equals("pbkdf2-sha256")) {
                continue;
            }
            if (matches(password, Integer.parseInt(f[2]), HexFormat.of().parseHex(f[3]), HexFormat.of().parseHex(f[4]))) {
                return;
            }
            break;
        }
        throw new AuthenticationException(REFUSED);
    }

    static boolean matches(String password, int iterations, byte[] salt, byte[] expected) throws AuthenticationException {
        try {
            PBEKeySpec spec = new PBEKeySpec(password.toCharArray(), salt, iterations, expected.length * 8);
            byte[] actual = SecretKeyFactory.getInstance("PBKDF2WithHmacSHA256").generateSecret(spec).getEncoded();
            return MessageDigest.isEqual(actual, expected);
        } catch (GeneralSecurityException e) {
            throw new AuthenticationException("feedloop: PBKDF2WithHmacSHA256 is not available", e);
        }
    }
}
