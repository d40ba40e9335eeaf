// Creates or updates a Kafka SCRAM user with kafka-clients' Admin API (AlterUserScramCredentials,
// KIP-554): the way to add a user to a KRaft cluster whose log directory is already formatted.
// Run with Java's source launcher, the broker's jars on the class path (dev/stack does):
//   java -cp "$KAFKA_APACHE_HOME/libs/*" dev/brokers/KafkaScramUser.java BOOTSTRAP USER PASSWORD
// It sets SCRAM-SHA-512 and SCRAM-SHA-256 (8192 iterations) and exits 0 once the broker accepted both.

import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.ScramCredentialInfo;
import org.apache.kafka.clients.admin.ScramMechanism;
import org.apache.kafka.clients.admin.UserScramCredentialUpsertion;

public class KafkaScramUser {
    public static void main(String[] args) throws Exception {
        if (args.length != 3) {
            System.err.println("usage: KafkaScramUser BOOTSTRAP USER PASSWORD");
            System.exit(2);
        }
        Map<String, Object> config = Map.of(
            AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, args[0],
            AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, 30000);
        try (Admin admin = Admin.create(config)) {
            // One mechanism per request: the broker refuses two alterations of one user in one request.
            for (ScramMechanism mechanism : List.of(ScramMechanism.SCRAM_SHA_512, ScramMechanism.SCRAM_SHA_256)) {
                var upsert = new UserScramCredentialUpsertion(args[1], new ScramCredentialInfo(mechanism, 8192), args[2]);
                admin.alterUserScramCredentials(List.of(upsert)).all().get(60, TimeUnit.SECONDS);
            }
        }
        System.out.println("SCRAM-SHA-512 and SCRAM-SHA-256 credentials set for user " + args[1]);
    }
}
